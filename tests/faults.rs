//! Disk faults, black-box: a full disk and a failing fsync under a real server,
//! over real sockets. Before the fault, events are acknowledged; during it nothing
//! is, every sender is told why (a fatal TCP error line, HTTP 503 with
//! `Retry-After`) and `/healthz` says "degraded"; once the disk works again ingest
//! resumes by itself; after a restart every acknowledged event is there exactly
//! once.
//!
//! The full disk is real when this process may mount a small tmpfs (root, as on
//! CI), else the log writer's fault seam ([`shopstream::log::Faults`]) fails its
//! writes with ENOSPC; a failing fsync can only be made through the seam.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use shopstream::log::Faults;
use util::*;

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

/// How the disk fails.
enum Fault {
    /// The data directory is on a small tmpfs, filled up by `filler`.
    Tmpfs { mount: PathBuf, filler: PathBuf },
    /// The writer's seam fails writes (`sync: false`) or fsyncs with `errno`.
    Seam { sync: bool, errno: i32 },
}

impl Fault {
    /// The text every refusal during the fault carries.
    fn reason(&self) -> String {
        let errno = match self {
            Fault::Tmpfs { .. } => ENOSPC,
            Fault::Seam { errno, .. } => *errno,
        };
        // "No space left on device (os error 28)", as the OS says it.
        std::io::Error::from_raw_os_error(errno).to_string()
    }

    fn start(&self, faults: &Faults) {
        match self {
            Fault::Tmpfs { filler, .. } => fill(filler),
            Fault::Seam { sync: false, errno } => faults.fail_writes(*errno),
            Fault::Seam { sync: true, errno } => faults.fail_syncs(*errno),
        }
    }

    fn end(&self, faults: &Faults) {
        match self {
            Fault::Tmpfs { filler, .. } => std::fs::remove_file(filler).expect("remove filler"),
            Fault::Seam { .. } => faults.clear(),
        }
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        if let Fault::Tmpfs { mount, .. } = self {
            let _ = Command::new("umount").arg(&*mount).status();
        }
    }
}

/// A 4 MiB tmpfs at `at`, if this process may mount one.
fn mount_tmpfs(at: &Path) -> bool {
    std::fs::create_dir_all(at).expect("mount point");
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(at)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Writes `path` until the filesystem is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0u8; 64 << 10];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(ENOSPC), "filling the disk: {e}");
            break;
        }
    }
    // Whatever part of a page is left: fill that too.
    while f.write(&[0]).is_ok_and(|n| n == 1) {}
}

const N: usize = 200;

fn ingest_survives(fault: Fault, data_dir: &Path) {
    let faults = Arc::new(Faults::default());
    let with_faults = |c: &mut shopstream::config::Config| c.log_faults = faults.clone();
    let server = TestServer::start_in(data_dir, with_faults);
    let reason = fault.reason();

    let before = send_messages(server.tcp, &numbered("before", N));
    assert!(before.errors().is_empty(), "{:?}", before.errors());
    assert_eq!(before.seq(), N as u64);

    fault.start(&faults);
    let during = numbered("during", N);
    let refused = send_messages(server.tcp, &during);
    assert!(
        refused.acks().is_empty(),
        "nothing acked: {:?}",
        refused.lines
    );
    let error = refused.errors()[0].clone();
    assert_eq!(error["fatal"], true, "{error}");
    let text = error["error"].as_str().expect("error text");
    assert!(
        text.contains("log write failed") && text.contains(&reason),
        "{text}"
    );
    let (status, answer) = post_batch_raw(server.http, &during);
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(answer.contains(&reason), "{answer}");
    let (status, health) = get_json(server.http, "/healthz");
    assert_eq!(
        (status, &health["status"]),
        (503, &json!("degraded")),
        "{health}"
    );
    assert!(
        health["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&reason)),
        "{health}"
    );
    // Reads go on.
    let p = profile(server.http, "before", N as u64);
    assert_eq!(p["profile"]["events_total"], N);

    fault.end(&faults);
    // The sender retries, as it was told to; the sequencer retries on a backoff,
    // so the first attempts may still be refused.
    let mut retried = None;
    for _ in 0..200 {
        let a = send_messages(server.tcp, &during);
        if a.errors().is_empty() {
            retried = Some(a);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let retried = retried.expect("ingest resumed once the disk worked again");
    assert_eq!(
        (retried.accepted(), retried.duplicates()),
        (N as u64, 0),
        "the refused events are logged on retry, not dropped as duplicates"
    );
    let after = send_messages(server.tcp, &numbered("after", N));
    assert!(after.errors().is_empty(), "{:?}", after.errors());
    assert_eq!(after.seq(), 3 * N as u64, "no hole in the numbering");
    let (status, health) = get_json(server.http, "/healthz");
    assert_eq!((status, &health["status"]), (200, &json!("ok")), "{health}");
    server.shutdown();

    let server = TestServer::start_in(data_dir, |_| {});
    for user in ["before", "during", "after"] {
        let p = profile(server.http, user, 3 * N as u64);
        assert_eq!(p["profile"]["events_total"], N, "{user}: exactly once");
    }
    let (_, health) = get_json(server.http, "/healthz");
    assert_eq!(health["logged_seq"], 3 * N as u64);
    server.shutdown();
}

#[test]
fn a_full_disk_refuses_ingest_loses_nothing_acknowledged_and_recovers() {
    let temp = tempfile::tempdir().expect("temp dir");
    let mount = temp.path().join("tmpfs");
    let fault = if mount_tmpfs(&mount) {
        Fault::Tmpfs {
            filler: mount.join("filler"),
            mount: mount.clone(),
        }
    } else {
        eprintln!("cannot mount a tmpfs here: the disk fills through the writer's fault seam");
        Fault::Seam {
            sync: false,
            errno: ENOSPC,
        }
    };
    ingest_survives(fault, &mount.join("data"));
}

/// After a failed fsync nothing of its batch is acknowledged and the log is cut
/// back to the last commit (see `LogWriter` on "fsyncgate").
#[test]
fn a_failed_fsync_is_never_acknowledged_and_ingest_resumes() {
    let temp = tempfile::tempdir().expect("temp dir");
    ingest_survives(
        Fault::Seam {
            sync: true,
            errno: EIO,
        },
        temp.path(),
    );
}
