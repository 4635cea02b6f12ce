//! Named pause points for crash tests.
//!
//! With `FABRIC_PAUSE_AT=<point>` (and `FABRIC_PAUSE_MARKER=<file>`) in its
//! environment, the process stops at that point: it creates the marker file
//! and sleeps until it is killed. A test waits for the marker and sends
//! SIGKILL, so every write point of the journal and the artifact store can be
//! shown to leave consistent state. Without the variable a point costs one
//! load of a cached `Option`.

use std::sync::OnceLock;

struct Pause {
    at: String,
    marker: Option<String>,
}

fn configured() -> Option<&'static Pause> {
    static PAUSE: OnceLock<Option<Pause>> = OnceLock::new();
    PAUSE
        .get_or_init(|| {
            let at = std::env::var("FABRIC_PAUSE_AT").ok()?;
            Some(Pause {
                at,
                marker: std::env::var("FABRIC_PAUSE_MARKER").ok(),
            })
        })
        .as_ref()
}

/// Stops here for good if the environment names this point.
pub fn point(name: &str) {
    let Some(p) = configured() else { return };
    if p.at != name {
        return;
    }
    tracing::warn!(point = name, "pausing at a crash-test point until killed");
    if let Some(marker) = &p.marker {
        let _ = std::fs::write(marker, name);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
