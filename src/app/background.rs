//! Training beside serving. A run's threads take the lowest priority, so a request's thread
//! gets a core the moment it wakes; and they give way to scoring passes, which share the memory
//! bus and the caches with them: at 100 M ratings a retrain added about 10 ms to the p99 of
//! uncached lists even at SCHED_IDLE. A replaced model is freed at that priority too.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::model::Checkpoint;

/// The longest a training thread waits at a checkpoint for the scoring passes to end.
const HOLD: Duration = Duration::from_millis(100);

/// After a wait that ran out, training goes on this long without waiting: a service scoring
/// without a pause still trains, at least a sixth of the time.
const RUN_AT_LEAST: Duration = Duration::from_millis(20);

/// Scoring passes running now, which training threads wait for at their checkpoints.
#[derive(Debug, Default)]
pub(super) struct ServingFirst {
    passes: AtomicUsize,
    /// Until when training runs without waiting, after a wait that ran out.
    free_until: Mutex<Option<Instant>>,
    passes_ended: Condvar,
    /// Time training threads have waited, summed over threads.
    held_nanos: AtomicU64,
}

/// A scoring pass running; dropping it ends the pass.
pub(super) struct ScoringPass(Arc<ServingFirst>);

impl Drop for ScoringPass {
    fn drop(&mut self) {
        if self.0.passes.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Under the lock, so that a thread between its test and its wait hears it.
            let _free_until = self.0.free_until.lock().expect("serving-first lock");
            self.0.passes_ended.notify_all();
        }
    }
}

impl ServingFirst {
    pub fn scoring(self: &Arc<Self>) -> ScoringPass {
        self.passes.fetch_add(1, Ordering::SeqCst);
        ScoringPass(self.clone())
    }

    /// Time training threads have waited so far, summed over threads.
    pub fn held(&self) -> Duration {
        Duration::from_nanos(self.held_nanos.load(Ordering::Relaxed))
    }

    /// Waits while a scoring pass runs, at most `HOLD`.
    fn give_way(&self) {
        if self.passes.load(Ordering::SeqCst) == 0 {
            return;
        }
        let started = Instant::now();
        let free_until = self.free_until.lock().expect("serving-first lock");
        if free_until.is_some_and(|until| started < until) {
            return;
        }
        let (mut free_until, waited) = self
            .passes_ended
            .wait_timeout_while(free_until, HOLD, |_| self.passes.load(Ordering::SeqCst) > 0)
            .expect("serving-first lock");
        if waited.timed_out() {
            *free_until = Some(Instant::now() + RUN_AT_LEAST);
        }
        let held = started.elapsed().as_nanos().try_into().unwrap_or(u64::MAX);
        self.held_nanos.fetch_add(held, Ordering::Relaxed);
    }

    /// `give_way` for async work, such as storing a trained model: PostgreSQL's backend writes it
    /// at the default priority, so it should write while no pass runs.
    pub async fn give_way_async(self: &Arc<Self>) {
        if self.passes.load(Ordering::SeqCst) == 0 {
            return;
        }
        let serving = self.clone();
        // The wait only orders work; if its thread is lost, the writer goes on without it.
        let _ = tokio::task::spawn_blocking(move || serving.give_way()).await;
    }
}

/// A training run's checkpoint: it gives way to scoring, then stops if the run is cancelled.
pub(super) struct GiveWay<'a> {
    pub cancel: &'a AtomicBool,
    pub serving: &'a ServingFirst,
}

impl Checkpoint for GiveWay<'_> {
    fn should_stop(&self) -> bool {
        self.serving.give_way();
        self.cancel.load(Ordering::Relaxed)
    }

    fn hold(&self) {
        self.serving.give_way();
    }
}

/// The nice value of a run's threads: the lowest priority, so that requests take the cores
/// whenever they need them and training takes what is left. On two cores a retrain at the
/// default priority doubled the p99 of the requests served beside it. Where the kernel allows,
/// the threads also take the SCHED_IDLE policy: a nice-19 thread still keeps a core until the
/// scheduler's next tick decides otherwise, while a request's thread that wakes up preempts a
/// SCHED_IDLE one at once.
const TRAINING_NICE: i32 = 19;

/// Runs `work` on a thread of its own at `TRAINING_NICE`, its parallel parts on a rayon pool of
/// its own whose threads inherit the priority. A thread's priority cannot be raised again without
/// privilege, so the work does not run on the blocking pool's thread itself, which goes on to
/// serve requests.
pub(super) fn at_background_priority<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    // Requests are scored on rayon's global pool, so it must not be started from the training
    // thread (its threads would inherit the low priority): asking its size starts it here. Nor
    // may training's parallel work run there: requests would queue behind it, at 100 M ratings
    // for 2.5 s behind the snapshot's sort and up to 10 s behind the item side's passes.
    rayon::current_num_threads();
    let span = tracing::Span::current();
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("training".to_string())
            .spawn_scoped(scope, move || {
                lower_priority();
                let pool = rayon::ThreadPoolBuilder::new()
                    .thread_name(|i| format!("training-{i}"))
                    .build()
                    .expect("start the training threads");
                pool.install(|| span.in_scope(work))
            })
            .expect("spawn the training thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Frees `value` on a thread of its own at the lowest priority, once no one else holds it. A
/// replaced model is hundreds of megabytes at 100 M ratings: freeing it on the thread that
/// swaps it out, a tokio worker, or on the scoring pass that let go of it last, would hold up
/// the requests waiting there.
pub(super) fn free_when_unshared<T: Send + Sync + 'static>(value: Arc<T>) {
    let freeing = std::thread::Builder::new()
        .name("freeing".to_string())
        .spawn(move || {
            lower_priority();
            let mut value = value;
            // Once this is the only holder no one can take another, so the test cannot go stale.
            while let Err(shared) = Arc::try_unwrap(value) {
                value = shared;
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    if let Err(error) = freeing {
        tracing::warn!(%error, "cannot start a thread to free a replaced model; freeing it here");
    }
}

/// On Linux the nice value and the scheduling policy belong to the thread, not the process, and
/// threads it starts inherit both.
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: setpriority reads no memory of ours; `who` 0 is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, TRAINING_NICE) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the training threads' priority"
        );
    }
    let idle = libc::sched_param { sched_priority: 0 };
    // SAFETY: the parameter outlives the call, which only reads it; pid 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot give the training threads the idle scheduling policy"
        );
    }
}

/// Elsewhere the nice value may be the whole process's: training keeps the default priority.
#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice() -> i32 {
        // SAFETY: as above; errno is cleared first, since -1 is a valid nice value.
        unsafe {
            *libc::__errno_location() = 0;
            libc::getpriority(libc::PRIO_PROCESS, 0)
        }
    }

    fn policy() -> i32 {
        // SAFETY: pid 0 is the calling thread; the call reads no memory of ours.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn training_threads_run_at_the_lowest_priority_and_the_caller_keeps_its_own() {
        let before = (nice(), policy());
        let (inside, pool, parallel) = at_background_priority(|| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            (
                (nice(), policy()),
                pool.broadcast(|_| (nice(), policy())),
                rayon::broadcast(|_| (nice(), policy())),
            )
        });
        let lowest = (TRAINING_NICE, libc::SCHED_IDLE);
        assert_eq!(inside, lowest);
        assert_eq!(pool, vec![lowest; 2]);
        // The work's parallel parts run on training threads, not on the pool that scores.
        assert!(parallel.iter().all(|&n| n == lowest), "{parallel:?}");
        let global = rayon::broadcast(|_| (nice(), policy()));
        assert!(global.iter().all(|&n| n == before), "{global:?}");
        assert_eq!((nice(), policy()), before);
    }

    #[test]
    fn a_panic_in_training_work_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| at_background_priority(|| panic!("boom")));
        assert!(caught.is_err());
    }

    #[test]
    fn a_replaced_value_is_freed_at_the_lowest_priority_after_its_last_other_holder() {
        struct Freed(std::sync::mpsc::Sender<(Option<String>, (i32, i32))>);
        impl Drop for Freed {
            fn drop(&mut self) {
                let thread = std::thread::current().name().map(str::to_string);
                self.0.send((thread, (nice(), policy()))).unwrap();
            }
        }
        let (sender, freed) = std::sync::mpsc::channel();
        let value = Arc::new(Freed(sender));
        let holder = value.clone();
        free_when_unshared(value);
        // A scoring pass still holds it: it stays.
        let waited = Duration::from_millis(100);
        assert!(freed.recv_timeout(waited).is_err());
        drop(holder);
        let (thread, priority) = freed.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(thread.as_deref(), Some("freeing"));
        assert_eq!(priority, (TRAINING_NICE, libc::SCHED_IDLE));
    }

    #[test]
    fn training_waits_for_a_scoring_pass_and_no_longer_than_the_hold() {
        let serving = Arc::new(ServingFirst::default());
        let cancel = AtomicBool::new(false);
        let checkpoint = GiveWay {
            cancel: &cancel,
            serving: &serving,
        };
        // No pass running: no wait.
        assert!(!checkpoint.should_stop());
        assert_eq!(serving.held(), Duration::ZERO);

        // A pass that ends after 30 ms releases the waiting thread then.
        let pass = serving.scoring();
        let started = Instant::now();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                drop(pass);
            });
            assert!(!checkpoint.should_stop());
        });
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
        assert!(serving.held() >= Duration::from_millis(30));

        // A pass that does not end: the wait runs out after HOLD, then training runs free.
        let pass = serving.scoring();
        let started = Instant::now();
        assert!(!checkpoint.should_stop());
        assert!(started.elapsed() >= HOLD);
        let held = serving.held();
        assert!(!checkpoint.should_stop());
        assert_eq!(serving.held(), held);
        drop(pass);

        cancel.store(true, Ordering::Relaxed);
        assert!(checkpoint.should_stop());
    }
}
