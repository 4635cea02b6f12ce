//! The GitOps folder source against a real folder, a real notify watch and the
//! embedded store: edits apply, generations move only on spec changes, broken
//! files change nothing, and removals are pruned only when asked.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabric_reconciler::source::{
    GitOpsConfig, GitOpsSource, SourceStatus, SyncOutcome, MANAGED_BY_ANNOTATION,
};
use fabric_reconciler::store::{EmbeddedStore, PutObject, Store};
use fabric_schemas::kinds::Kind;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(20);

fn node_yaml(name: &str, site: &str, label: &str) -> String {
    format!(
        "apiVersion: fabric.dev/v1alpha1
kind: FabricNode
metadata:
  name: {name}
  labels:
    team: {label}
spec:
  area: alpha
  siteId: {site}
  localityGroup: alpha-lan-1
  natGroup: alpha-nat-1
  roles:
  - control-api
"
    )
}

fn service_yaml(name: &str, providers: &[&str]) -> String {
    let list: String = providers.iter().map(|p| format!("  - {p}\n")).collect();
    format!(
        "apiVersion: fabric.dev/v1alpha1
kind: ServiceRecord
metadata:
  name: {name}
spec:
  service: {name}
  providers:
{list}"
    )
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).expect("write manifest");
}

struct Running {
    store: Arc<dyn Store>,
    status: watch::Receiver<SourceStatus>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _tmp: tempfile::TempDir,
}

impl Running {
    async fn start(dir: &Path, prune: bool, tmp: tempfile::TempDir) -> Running {
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(&tmp.path().join("store.redb"))
                .await
                .expect("open store"),
        );
        Running::start_on(dir, prune, tmp, store)
    }

    fn start_on(dir: &Path, prune: bool, tmp: tempfile::TempDir, store: Arc<dyn Store>) -> Running {
        let mut config = GitOpsConfig::new(dir);
        config.prune = prune;
        // The watch is under test: no resync to paper over a missed event.
        config.resync = Duration::from_secs(3600);
        let source = GitOpsSource::new(config, store.clone());
        let status = source.status();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            source
                .run(async move {
                    let _ = rx.await;
                })
                .await
                .expect("source runs");
        });
        Running {
            store,
            status,
            stop,
            task,
            _tmp: tmp,
        }
    }

    /// Waits (bounded) until the source has finished more than `after` syncs
    /// and `ok` holds for its status.
    async fn wait_status(
        &mut self,
        after: u64,
        what: &str,
        ok: impl Fn(&SourceStatus) -> bool,
    ) -> SourceStatus {
        let mut rx = self.status.clone();
        let waited = tokio::time::timeout(WAIT, async {
            rx.wait_for(|s| s.syncs > after && ok(s))
                .await
                .map(|s| s.clone())
        })
        .await;
        match waited {
            Ok(Ok(status)) => status,
            Ok(Err(_)) => panic!("{what}: the source stopped"),
            Err(_) => panic!(
                "{what}: not seen within {WAIT:?}; last status {:?}",
                self.status.borrow()
            ),
        }
    }

    fn syncs(&self) -> u64 {
        self.status.borrow().syncs
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("source stops")
            .expect("source task ok");
    }
}

async fn generation(store: &Arc<dyn Store>, kind: Kind, name: &str) -> Option<(i64, u64)> {
    store
        .get_object(kind, name)
        .await
        .expect("read store")
        .map(|o| (o.generation(), o.resource_version))
}

fn synced(s: &SourceStatus) -> bool {
    s.condition.as_ref().is_some_and(|c| c.status == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_file_updates_the_store_and_generation_advances_on_spec_change_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("repo");
    std::fs::create_dir_all(dir.join("nodes")).expect("mkdir");
    write(
        &dir.join("nodes"),
        "n1.yaml",
        &node_yaml("n1", "site-a", "red"),
    );
    write(&dir, "svc.yaml", &service_yaml("control-api", &["n1"]));
    let mut run = Running::start(&dir, false, tmp).await;
    run.wait_status(0, "first sync", synced).await;
    let (g1, rv1) = generation(&run.store, Kind::FabricNode, "n1")
        .await
        .expect("n1 stored");
    assert_eq!(g1, 1);
    let stored = run
        .store
        .get_object(Kind::FabricNode, "n1")
        .await
        .expect("read")
        .expect("n1");
    assert_eq!(
        stored
            .metadata
            .annotations
            .get(MANAGED_BY_ANNOTATION)
            .map(String::as_str),
        Some("gitops")
    );

    // A label edit is a change, but not of the spec: generation stays.
    let before = run.syncs();
    write(
        &dir.join("nodes"),
        "n1.yaml",
        &node_yaml("n1", "site-a", "blue"),
    );
    run.wait_status(before, "label edit applied", synced).await;
    let wait_label = Instant::now();
    let (g2, rv2) = loop {
        let (g, rv) = generation(&run.store, Kind::FabricNode, "n1")
            .await
            .expect("n1");
        if rv != rv1 || wait_label.elapsed() > WAIT {
            break (g, rv);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(g2, 1, "label change must not bump generation");
    assert!(rv2 > rv1);

    // A spec edit bumps generation by one.
    let before = run.syncs();
    write(
        &dir.join("nodes"),
        "n1.yaml",
        &node_yaml("n1", "site-b", "blue"),
    );
    run.wait_status(before, "spec edit applied", synced).await;
    let (g3, _) = generation(&run.store, Kind::FabricNode, "n1")
        .await
        .expect("n1");
    assert_eq!(g3, 2);
    let spec = run
        .store
        .get_object(Kind::FabricNode, "n1")
        .await
        .expect("read")
        .expect("n1")
        .spec;
    assert_eq!(spec["siteId"], "site-b");
    // The unchanged service was not touched.
    assert_eq!(
        generation(&run.store, Kind::ServiceRecord, "control-api")
            .await
            .map(|g| g.0),
        Some(1)
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_leaves_the_last_good_state_and_surfaces_the_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("repo");
    std::fs::create_dir_all(&dir).expect("mkdir");
    write(&dir, "n1.yaml", &node_yaml("n1", "site-a", "red"));
    let mut run = Running::start(&dir, true, tmp).await;
    run.wait_status(0, "first sync", synced).await;
    let good = run
        .store
        .get_object(Kind::FabricNode, "n1")
        .await
        .expect("read")
        .expect("n1");

    // One good edit and one broken file in the same change: nothing applies.
    let before = run.syncs();
    write(&dir, "n1.yaml", &node_yaml("n1", "site-z", "red"));
    write(&dir, "broken.yaml", "apiVersion: fabric.dev/v1alpha1\nkind: FabricNode\nmetadata:\n  name: n2\nspec:\n  area: alpha\n  siteIdd: typo\n");
    let status = run
        .wait_status(before, "sync failure reported", |s| {
            !synced(s) && s.condition.is_some()
        })
        .await;
    let cond = status.condition.expect("condition");
    assert_eq!(cond.type_, "GitOpsSynced");
    assert_eq!(cond.reason, "ManifestErrors");
    assert!(
        cond.message.contains("broken.yaml"),
        "message names the file: {}",
        cond.message
    );
    assert!(!status.errors.is_empty());
    let now = run
        .store
        .get_object(Kind::FabricNode, "n1")
        .await
        .expect("read")
        .expect("n1");
    assert_eq!(now, good, "the last good state stays in force");
    assert!(run
        .store
        .get_object(Kind::FabricNode, "n2")
        .await
        .expect("read")
        .is_none());
    let events = run.store.list_events(0, 100).await.expect("events");
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.event.reason == "GitOpsSyncFailed")
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert!(failed[0].event.message.contains("broken.yaml"));
    assert_eq!(failed[0].event.data["condition"]["status"], "False");

    // Fixing the file applies everything, and the condition turns True again.
    let before = run.syncs();
    std::fs::remove_file(dir.join("broken.yaml")).expect("rm");
    run.wait_status(before, "recovered", synced).await;
    let (g, _) = generation(&run.store, Kind::FabricNode, "n1")
        .await
        .expect("n1");
    assert_eq!(g, 2);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_file_reports_an_orphan_unless_prune_is_set() {
    for prune in [false, true] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("repo");
        std::fs::create_dir_all(&dir).expect("mkdir");
        write(&dir, "n1.yaml", &node_yaml("n1", "site-a", "red"));
        write(&dir, "n2.yaml", &node_yaml("n2", "site-a", "red"));
        let store_path = tmp.path().join("store.redb");
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&store_path).await.expect("open"));
        // An object made through the API (no GitOps annotation): never pruned.
        store
            .put_object(PutObject::new(
                Kind::FabricNode,
                "api-made",
                serde_json::json!({"area": "alpha", "siteId": "s", "localityGroup": "l", "natGroup": "n"}),
            ))
            .await
            .expect("put");
        let mut run = Running::start_on(&dir, prune, tmp, store);
        run.wait_status(0, "first sync", synced).await;
        assert!(generation(&run.store, Kind::FabricNode, "n2")
            .await
            .is_some());

        let before = run.syncs();
        std::fs::remove_file(dir.join("n2.yaml")).expect("rm");
        let status = run.wait_status(before, "removal handled", synced).await;
        let n2 = generation(&run.store, Kind::FabricNode, "n2").await;
        if prune {
            assert!(n2.is_none(), "prune=true deletes n2");
            assert!(status.orphaned.is_empty());
        } else {
            assert!(n2.is_some(), "prune=false keeps n2");
            assert_eq!(status.orphaned, vec![(Kind::FabricNode, "n2".to_owned())]);
            let events = run.store.list_events(0, 100).await.expect("events");
            assert!(events.iter().any(|e| e.event.reason == "GitOpsOrphaned"));
        }
        assert!(generation(&run.store, Kind::FabricNode, "api-made")
            .await
            .is_some());
        assert!(generation(&run.store, Kind::FabricNode, "n1")
            .await
            .is_some());
        run.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_writes_is_applied_in_one_debounced_sync() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("repo");
    std::fs::create_dir_all(&dir).expect("mkdir");
    write(&dir, "n0.yaml", &node_yaml("n0", "site-a", "red"));
    let mut run = Running::start(&dir, false, tmp).await;
    run.wait_status(0, "first sync", synced).await;
    let before = run.syncs();
    // Ten files 50 ms apart: never a 300 ms quiet period until the end.
    for i in 1..=10 {
        write(
            &dir,
            &format!("n{i}.yaml"),
            &node_yaml(&format!("n{i}"), "site-a", "red"),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = run
        .wait_status(before, "burst applied", |s| synced(s) && s.objects == 11)
        .await;
    assert_eq!(status.syncs, before + 1, "one sync for the whole burst");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_on_a_clean_folder_changes_nothing_the_second_time() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("repo");
    std::fs::create_dir_all(&dir).expect("mkdir");
    write(&dir, "n1.yaml", &node_yaml("n1", "site-a", "red"));
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&tmp.path().join("store.redb"))
            .await
            .expect("open"),
    );
    let source = GitOpsSource::new(GitOpsConfig::new(&dir), store.clone());
    let first = source.sync_once().await.expect("sync");
    assert!(
        matches!(&first, SyncOutcome::Applied { changed, .. } if changed.len() == 1),
        "{first:?}"
    );
    let second = source.sync_once().await.expect("sync");
    assert_eq!(
        second,
        SyncOutcome::Applied {
            changed: vec![],
            pruned: vec![],
            orphaned: vec![]
        }
    );
}
