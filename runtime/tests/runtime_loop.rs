//! The reconcile runtime on a paused tokio clock: de-duplication, backoff
//! growth and reset, no concurrent reconcile of one key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fabric_runtime::{
    Action, BackoffConfig, Controller, ControllerConfig, Jitter, QueueHandle, Reconciler,
};
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
#[error("planned failure")]
struct Planned;

/// What the test reconciler saw and how it should behave.
#[derive(Default)]
struct Probe {
    /// (key, instant) of every reconcile start.
    calls: Mutex<Vec<(String, Instant)>>,
    /// Remaining planned failures per key.
    fail: Mutex<HashMap<String, u32>>,
    /// Reconciles running now, per key, and the most ever seen at once.
    running: Mutex<HashMap<String, usize>>,
    max_same_key: Mutex<usize>,
    max_total: Mutex<usize>,
    /// Keys that no longer exist.
    gone: Mutex<Vec<String>>,
    work: Duration,
    action: Mutex<Option<Action>>,
}

impl Probe {
    fn calls_for(&self, key: &str) -> Vec<Instant> {
        lock(&self.calls)
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, t)| *t)
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("test mutex poisoned")
}

struct TestLoop;

impl Reconciler for TestLoop {
    type Key = String;
    type Object = String;
    type Ctx = Probe;
    type Error = Planned;

    async fn fetch(&self, key: &String, ctx: &Probe) -> Result<Option<Arc<String>>, Planned> {
        if lock(&ctx.gone).contains(key) {
            return Ok(None);
        }
        Ok(Some(Arc::new(key.clone())))
    }

    async fn reconcile(&self, obj: Arc<String>, ctx: &Probe) -> Result<Action, Planned> {
        let key = obj.as_str().to_owned();
        lock(&ctx.calls).push((key.clone(), Instant::now()));
        {
            let mut running = lock(&ctx.running);
            let n = running.entry(key.clone()).or_insert(0);
            *n += 1;
            let same = *n;
            let total: usize = running.values().sum();
            let mut m = lock(&ctx.max_same_key);
            *m = (*m).max(same);
            let mut t = lock(&ctx.max_total);
            *t = (*t).max(total);
        }
        if !ctx.work.is_zero() {
            tokio::time::sleep(ctx.work).await;
        }
        if let Some(n) = lock(&ctx.running).get_mut(&key) {
            *n -= 1;
        }
        let mut fail = lock(&ctx.fail);
        if let Some(n) = fail.get_mut(&key).filter(|n| **n > 0) {
            *n -= 1;
            return Err(Planned);
        }
        Ok(lock(&ctx.action).unwrap_or(Action::AwaitChange))
    }
}

fn start(probe: Probe, backoff: BackoffConfig) -> (Arc<Probe>, QueueHandle<String>, Stop) {
    let probe = Arc::new(probe);
    let config = ControllerConfig {
        concurrency: 4,
        backoff,
        shutdown_grace: Duration::from_secs(5),
        warn_on_failure: true,
    };
    let controller = Controller::new(Arc::new(TestLoop), probe.clone(), config);
    let queue = controller.queue();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller.run(async move {
        let _ = rx.await;
    }));
    (probe, queue, Stop { tx, task })
}

struct Stop {
    tx: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Stop {
    async fn stop(self) {
        let _ = self.tx.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("controller stops within 30 s")
            .expect("controller task does not panic");
    }
}

fn backoff_100ms_to_1s() -> BackoffConfig {
    // Exact delays: these tests check the schedule itself.
    BackoffConfig {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(1),
        jitter: Jitter::None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_enqueued_many_times_while_pending_is_reconciled_once() {
    let probe = Probe::default();
    let (probe, queue, stop) = start(probe, backoff_100ms_to_1s());
    // All triggers land before the controller task first runs.
    for _ in 0..10 {
        queue.enqueue("a".into());
    }
    queue.enqueue("b".into());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(probe.calls_for("a").len(), 1);
    assert_eq!(probe.calls_for("b").len(), 1);
    stop.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_key_backs_off_exponentially_to_the_cap_and_resets_after_success() {
    let probe = Probe::default();
    lock(&probe.fail).insert("k".into(), 6);
    let (probe, queue, stop) = start(probe, backoff_100ms_to_1s());
    let t0 = Instant::now();
    queue.enqueue("k".into());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = probe.calls_for("k");
    // 6 failures then one success: 7 calls.
    assert_eq!(calls.len(), 7, "calls: {calls:?}");
    let gaps: Vec<u128> = calls
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(gaps, [100, 200, 400, 800, 1000, 1000]);
    assert!(calls[0] - t0 < Duration::from_millis(1));

    // After the success the count is reset: the next failure waits the base delay.
    lock(&probe.fail).insert("k".into(), 1);
    queue.enqueue("k".into());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let calls = probe.calls_for("k");
    assert_eq!(calls.len(), 9, "calls: {calls:?}");
    assert_eq!((calls[8] - calls[7]).as_millis(), 100);
    stop.stop().await;
}

#[tokio::test(start_paused = true)]
async fn triggers_for_a_backing_off_key_wait_for_its_backoff() {
    let probe = Probe::default();
    lock(&probe.fail).insert("k".into(), 3);
    let (probe, queue, stop) = start(probe, backoff_100ms_to_1s());
    queue.enqueue("k".into());
    // Hammer the key with triggers (a resync loop would): the retries still
    // follow 100, 200 ms.
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        queue.enqueue("k".into());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = probe.calls_for("k");
    let gaps: Vec<u128> = calls
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(&gaps[..3], [100, 200, 400]);
    stop.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_key_is_never_reconciled_concurrently_with_itself() {
    let probe = Probe {
        work: Duration::from_millis(100),
        ..Probe::default()
    };
    let (probe, queue, stop) = start(probe, backoff_100ms_to_1s());
    // Trigger three keys every 30 ms for 2 s: every reconcile overlaps triggers.
    for _ in 0..66 {
        for k in ["x", "y", "z"] {
            queue.enqueue(k.into());
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(*lock(&probe.max_same_key), 1);
    // The test can see concurrency: different keys did run together.
    assert!(*lock(&probe.max_total) > 1);
    // A trigger during a reconcile is not lost: it runs again afterwards, so
    // each key ran about every 100 ms, not once.
    for k in ["x", "y", "z"] {
        let n = probe.calls_for(k).len();
        assert!((15..=25).contains(&n), "{k}: {n} reconciles");
    }
    stop.stop().await;
}

#[tokio::test(start_paused = true)]
async fn requeue_reconciles_again_after_the_delay_and_a_gone_object_is_dropped() {
    let probe = Probe::default();
    *lock(&probe.action) = Some(Action::requeue(Duration::from_secs(1)));
    let (probe, queue, stop) = start(probe, backoff_100ms_to_1s());
    queue.enqueue("r".into());
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let calls = probe.calls_for("r");
    assert_eq!(calls.len(), 4, "at 0, 1, 2 and 3 s");
    lock(&probe.gone).push("r".into());
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The fetch after 3 s found nothing: no more reconciles.
    assert_eq!(probe.calls_for("r").len(), 4);
    stop.stop().await;
}
