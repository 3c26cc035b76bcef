//! A client that keeps requesting a site over HTTPS (HTTP/1.1 and HTTP/2 in turn, with curl,
//! trusting only a given root) while something changes underneath — a certificate renewed,
//! nginx reloaded — and counts every request that did not get a 200.
//!
//! One failure is not counted: a reloading nginx answers a connection it accepted but whose
//! request it had not read with a GOAWAY saying so (`last_stream=0`). RFC 9113 §8.7 calls
//! that request unprocessed and safe to retry, browsers retry it without showing anything,
//! curl does not: this client retries exactly that case, once.

use std::{
    path::Path,
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::panel::wait_for;

pub struct RequestLoop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    client: Option<JoinHandle<Vec<String>>>,
}

impl RequestLoop {
    /// Starts requesting `https://host:port/`, resolved to 127.0.0.1.
    pub fn start(host: &str, port: u16, root: &Path) -> RequestLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let client = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let (host, root) = (host.to_owned(), root.to_owned());
            std::thread::spawn(move || {
                let get = |http: &str| get(&host, port, &root, http);
                let mut errors = Vec::new();
                for http in ["--http1.1", "--http2"].into_iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut out = get(http);
                    if out.status.code() == Some(16)
                        && String::from_utf8_lossy(&out.stderr)
                            .contains("GOAWAY, error=0, last_stream=0")
                    {
                        out = get(http);
                    }
                    if out.status.success() && out.stdout == b"200" {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!(
                            "{http}: {} {:?} {}",
                            out.status,
                            String::from_utf8_lossy(&out.stdout),
                            String::from_utf8_lossy(&out.stderr)
                                .lines()
                                .rev()
                                .take(3)
                                .collect::<Vec<_>>()
                                .join(" | ")
                        ));
                    }
                }
                errors
            })
        };
        RequestLoop {
            stop,
            ok,
            failed,
            client: Some(client),
        }
    }

    /// Requests answered so far, well or not.
    pub fn answered(&self) -> usize {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests than now have been answered.
    pub async fn wait_more(&self, what: &str, n: usize) {
        let target = self.answered() + n;
        wait_for(what, Duration::from_secs(60), || async {
            (self.answered() >= target).then_some(())
        })
        .await;
    }

    /// Stops; the requests that got a 200, and what went wrong with the others.
    pub fn stop(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .client
            .take()
            .expect("stopped once")
            .join()
            .expect("the request loop panicked");
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

impl Drop for RequestLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn get(host: &str, port: u16, root: &Path, http: &str) -> Output {
    Command::new("curl")
        .args([
            "-sv",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(http)
        .arg("--cacert")
        .arg(root)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("curl runs")
}
