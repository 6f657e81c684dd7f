//! Starts Debian's Prometheus (path in `SERIN_TEST_PROMETHEUS`, installed by scripts/test.sh)
//! on a free 127.0.0.1 port with an empty TSDB, scraping the given targets every second; killed
//! when the handle is dropped. Prometheus 2.42 applies its scrape targets on a 5 s tick, so the
//! first sample arrives about 5.5 s after start.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A scrape target and the labels Prometheus attaches to its series (as the Kubernetes
/// service discovery and App Mesh's relabelling would).
pub struct ScrapeTarget {
    pub address: String,
    pub path: String,
    pub labels: Vec<(String, String)>,
}

pub struct Prometheus {
    pub url: String,
    child: Child,
    dir: PathBuf,
}

/// The Prometheus binary, or a failure that says how to install it.
pub fn prometheus_binary() -> PathBuf {
    if let Ok(p) = std::env::var("SERIN_TEST_PROMETHEUS") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "SERIN_TEST_PROMETHEUS={} does not exist; run scripts/test.sh, which installs Debian's prometheus",
            p.display()
        );
        return p;
    }
    let fallback = PathBuf::from("/usr/bin/prometheus");
    assert!(
        fallback.exists(),
        "Prometheus not found: set SERIN_TEST_PROMETHEUS or run scripts/test.sh, which installs Debian's prometheus package"
    );
    fallback
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Prometheus {
    pub fn start(targets: &[ScrapeTarget]) -> Prometheus {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("serin-prom-{}-{n}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let mut config = String::from(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n",
        );
        for (i, t) in targets.iter().enumerate() {
            let labels = t
                .labels
                .iter()
                .map(|(k, v)| format!("{k}: '{v}'"))
                .collect::<Vec<_>>()
                .join(", ");
            config.push_str(&format!(
                "  - job_name: t{i}\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n    metrics_path: {}\n    static_configs:\n      - targets: ['{}']\n        labels: {{{labels}}}\n",
                t.path, t.address
            ));
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(["--storage.tsdb.retention.time=1h", "--log.level=warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        };
        p.wait_ready(port);
        p
    }

    fn wait_ready(&mut self, port: u16) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
                panic!("prometheus exited with {status} before it was ready:\n{log}");
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let _ =
                    s.write_all(b"GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "prometheus not ready after 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
