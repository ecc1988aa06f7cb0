//! The dashboard in a real browser: headless Chromium, driven through chromedriver, against a real
//! server on each database. It enters the admin token, starts a retrain and watches its curve gain
//! points, cancels it, sees the version of a second one go live, rolls back, and explores a user
//! whose list changes with its explanations when a rating is posted. Screenshots of every page
//! land in target/tmp/dashboard/.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::{ADMIN_TOKEN, Backend, TestApp, fast_training, seed, spawn_app};

/// Where Debian's chromium-driver and chromium put them; CHROMEDRIVER and CHROMIUM override.
fn program(variable: &str, default: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var(variable).unwrap_or_else(|_| default.to_string()));
    path.exists().then_some(path)
}

/// Under CI (or with REQUIRE_BROWSER set) a missing browser fails the test; elsewhere the test
/// says loudly that it did not run, and scripts/test repeats it at the end.
fn browser_programs() -> Option<(PathBuf, PathBuf)> {
    let found = program("CHROMEDRIVER", "/usr/bin/chromedriver")
        .zip(program("CHROMIUM", "/usr/bin/chromium"));
    if found.is_none() {
        let required =
            std::env::var_os("CI").is_some() || std::env::var_os("REQUIRE_BROWSER").is_some();
        let message = "the dashboard's browser test needs Chromium and chromedriver \
                       (apt-get install chromium chromium-driver, or set CHROMIUM and CHROMEDRIVER)";
        assert!(!required, "{message}");
        eprintln!("\n!!!!!!!!!! NOT RUN: {message} !!!!!!!!!!\n");
    }
    found
}

struct Browser {
    client: Client,
    driver: Child,
    shots: PathBuf,
}

impl Browser {
    async fn start(chromedriver: PathBuf, chromium: PathBuf, shots: PathBuf) -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            }
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session from chromedriver: {e}"),
            }
        };
        // No screenshot of an earlier run stays beside this run's.
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            driver,
            shots,
        }
    }

    async fn shoot(&self, name: &str) {
        // The page as one opens it, not wherever the last click scrolled it.
        let _ = self.client.execute("window.scrollTo(0, 0)", vec![]).await;
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.attr(name).await.ok().flatten()
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    async fn fill(&self, css: &str, text: &str) {
        let input = self.client.find(Locator::Css(css)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// Item ids of a list's entries, in order, read in one script so that a list the page is
    /// redrawing is read whole or not at all.
    async fn items(&self, css: &str) -> Vec<String> {
        let script = "return [...document.querySelectorAll(arguments[0])].map(e => e.dataset.item)";
        let ids = self.client.execute(script, vec![json!(css)]).await.unwrap();
        serde_json::from_value(ids).unwrap()
    }

    /// Polls `check` until it holds; on timeout saves a screenshot named after `what` and fails.
    async fn wait<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        while !check().await {
            if started.elapsed() > Duration::from_secs(300) {
                self.shoot(&format!("failed-{}", what.replace(' ', "-")))
                    .await;
                panic!("timed out waiting until {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends the session, which quits Chromium; dropping the browser then stops chromedriver.
    async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The page and its files come with a policy that runs only the page's own script, and an unknown
/// file is a JSON 404. (Needs no browser.)
async fn the_page_is_served_with_a_strict_policy(app: TestApp) {
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/style.css", "text/css; charset=utf-8"),
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert_eq!(headers["content-type"], content_type, "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self';") && policy.contains("default-src 'none'"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let body = response.text().await.unwrap();
        assert!(!body.is_empty());
        if path == "/" {
            // No inline script or style, which the policy would block.
            assert!(body.contains(r#"<script type="module" src="/dashboard/app.js"></script>"#));
            assert_eq!(body.matches("<script").count(), 1);
            assert!(!body.contains("style=") && !body.contains("<style"));
        }
    }
    let (status, body) = app.call("GET", "/dashboard/secrets.txt", None, false).await;
    assert_eq!(status, 404);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secrets.txt")
    );
}
crate::on_both_backends!(the_page_is_served_with_a_strict_policy);

async fn active_version(app: &TestApp) -> Option<i64> {
    let (_, ready) = app.call("GET", "/readyz", None, false).await;
    ready["model_version"].as_i64()
}

async fn drive(app: &TestApp, browser: &Browser) {
    let b = browser;
    // Without the token: public figures and how to enable admin.
    b.client.goto(&app.url("/")).await.unwrap();
    b.wait("the counts show", || async {
        b.text("#count-users").await == "90"
    })
    .await;
    assert_eq!(b.text("#serving-version").await, "v1");
    assert!(b.text("#admin-hint").await.contains("ADMIN_TOKEN"));
    b.shoot("1-overview-public").await;

    // The token, once; the overview then shows the active model's metrics.
    b.fill("#token-input", ADMIN_TOKEN).await;
    b.click("#token-save").await;
    b.wait("the active model shows", || async {
        b.text("#active-version").await == "v1"
    })
    .await;
    assert!(b.text("#active-data").await.contains("ratings"));
    let stored: Value = b
        .client
        .execute("return sessionStorage.getItem('rbm-admin-token')", vec![])
        .await
        .unwrap();
    assert_eq!(
        stored,
        json!(ADMIN_TOKEN),
        "the token is kept in this tab only"
    );
    assert!(
        !b.client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains(ADMIN_TOKEN)
    );
    b.shoot("2-overview").await;

    // A retrain from the page that runs until it is cancelled: its curve gains points while it
    // runs, however fast the machine.
    b.click("#nav-training").await;
    b.fill("#retrain-epochs", "100000").await;
    b.fill("#retrain-hidden", "48").await;
    b.fill("#retrain-valid", "0.1").await;
    b.fill("#retrain-patience", "0").await;
    b.click("#retrain-start").await;
    b.wait("the run shows as running with points", || async {
        b.text("#run-status").await == "running" && points(b).await >= 1
    })
    .await;
    let first = points(b).await;
    b.wait("the curve gains points", || async {
        points(b).await > first
    })
    .await;
    b.shoot("3-training-running").await;
    b.click("#run-cancel").await;
    b.wait("the run is cancelled", || async {
        b.text("#run-status").await == "cancelled"
    })
    .await;
    assert_eq!(
        active_version(app).await,
        Some(1),
        "a cancelled run changes nothing"
    );

    // A short one that ends: its model goes live.
    b.fill("#retrain-epochs", "300").await;
    b.click("#retrain-start").await;
    b.wait("the second run succeeds", || async {
        b.text("#run-title").await == "Run 3" && b.text("#run-status").await == "succeeded"
    })
    .await;
    b.wait("the run names its model", || async {
        b.text("#run-progress-text").await.contains("model v2")
    })
    .await;
    b.shoot("4-training-done").await;
    assert_eq!(active_version(app).await, Some(2));

    // The new version is active; roll back to the first, with a confirmation.
    b.click("#nav-models").await;
    b.wait("v2 is listed as active", || async {
        b.text("tr[data-version='2']").await.contains("active")
    })
    .await;
    b.shoot("5-models").await;
    b.click("tr[data-version='1'] button.activate").await;
    assert!(b.text("#confirm-text").await.contains("v1"));
    assert_eq!(
        active_version(app).await,
        Some(2),
        "nothing changes before confirming"
    );
    b.shoot("6-models-confirm").await;
    b.click("#confirm-yes").await;
    b.wait("v1 is active again", || async {
        b.text("tr[data-version='1']").await.contains("active")
    })
    .await;
    assert_eq!(active_version(app).await, Some(1));

    // The explorer: a user's list with explanations, and a posted rating changes it.
    b.click("#nav-explorer").await;
    b.fill("#user-id", "u0").await;
    b.click("#user-load").await;
    b.wait("u0's list shows", || async {
        !b.items("#user-recs > li").await.is_empty()
    })
    .await;
    assert_eq!(b.text("#user-source").await, "model v1");
    let before = b.items("#user-recs > li").await;
    let reasons = b.items("#user-recs > li:first-child .because li").await;
    assert!(!reasons.is_empty(), "the top item comes with its reasons");
    let rated = b.text("#user-count").await;
    b.shoot("7-explorer").await;

    let top = before[0].clone();
    b.fill("#rate-item", &top).await;
    b.fill("#rate-value", "5").await;
    b.click("#rate-submit").await;
    b.wait("the list drops the rated item", || async {
        let now = b.items("#user-recs > li").await;
        !now.is_empty() && !now.contains(&top) && b.text("#user-count").await != rated
    })
    .await;
    let explained_by: Vec<String> = b.items("#user-recs .because li").await;
    assert!(
        explained_by.contains(&top),
        "the new rating explains an item of the new list: {explained_by:?}"
    );
    b.shoot("8-explorer-rated").await;

    b.fill("#item-id", &top).await;
    b.click("#item-load").await;
    b.wait("similar items show", || async {
        !b.items("#item-similar > li").await.is_empty()
    })
    .await;
    b.shoot("9-explorer-item").await;

    // A phone-sized screen: nothing wider than the screen.
    b.client.set_window_size(390, 844).await.unwrap();
    for page in ["explorer", "overview", "training"] {
        b.click(&format!("#nav-{page}")).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fits: Value = b
            .client
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(fits, json!(true), "the {page} page fits a phone's width");
        b.shoot(&format!("phone-{page}")).await;
    }
}

/// Points drawn in the run's chart.
async fn points(b: &Browser) -> usize {
    b.attr("#run-curves", "data-points")
        .await
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn a_dashboard_session(backend: Backend) {
    let Some((chromedriver, chromium)) = browser_programs() else {
        return;
    };
    let app = spawn_app(backend).await;
    seed(&app, 90, 30).await;
    let first = app.retrain(fast_training()).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("dashboard")
        .join(format!("{backend:?}").to_lowercase());
    let browser = Browser::start(chromedriver, chromium, shots).await;
    drive(&app, &browser).await;
    browser.close().await;
}

crate::on_both_backends!(backend a_dashboard_session);
