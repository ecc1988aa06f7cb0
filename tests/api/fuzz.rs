//! Generated requests against the real router over real HTTP: schemathesis, from openapi.yaml,
//! on both stores, with the admin token and without. It fails on any 5xx, any response that
//! breaks the schema of its route and status, any status the spec does not declare, and any
//! content type but the one declared. `scripts/test` installs it in a virtualenv and passes its
//! path in SCHEMATHESIS; without it this test fails and says how to get it.

use crate::{ADMIN_TOKEN, Backend, on_both_backends};

/// Examples per operation and phase: about a thousand requests a run, in well under a minute.
const EXAMPLES: &str = "20";

async fn generated_requests_get_documented_answers(backend: Backend) {
    let schemathesis = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| {
        panic!(
            "SCHEMATHESIS is not set: run the suite with scripts/test, which installs schemathesis \
             in a virtualenv, or set it to a schemathesis executable"
        )
    });
    // Generated retrains may ask for anything; a small budget refuses the big ones (422).
    let app = crate::spawn_app_tuned(backend, |s| s.training_memory_mb = 256).await;
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
    for (seed, token) in [("1", Some(ADMIN_TOKEN)), ("2", None)] {
        let mut command = tokio::process::Command::new(&schemathesis);
        command.args(["run", spec, "--url", &app.base]).args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            EXAMPLES,
            "--seed",
            seed,
            "--request-timeout",
            "30",
        ]);
        if let Some(token) = token {
            command.args(["--header", &format!("Authorization: Bearer {token}")]);
        }
        let output = command
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {schemathesis}: {e}"));
        let report = String::from_utf8_lossy(&output.stdout);
        let summary: Vec<&str> = report.lines().filter(|l| l.contains("generated")).collect();
        println!(
            "{backend:?}, token {}: {}",
            token.is_some(),
            summary.join(" ")
        );
        assert!(
            output.status.success(),
            "schemathesis found failures ({backend:?}, token {}):\n{report}\n{}",
            token.is_some(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
on_both_backends!(backend generated_requests_get_documented_answers);
