//! The real binary as a child process, running `pkb-edge run` with a test's config; its log and
//! audit output, signals, and a graceful upgrade to a new process.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{Killed, ProxyConfig};

/// The real binary, running `pkb-edge run`.
pub struct Proxy {
    child: Option<Killed>,
    pub config: ProxyConfig,
    log: PathBuf,
    out: PathBuf,
}

impl Proxy {
    pub fn start(dir: &tempfile::TempDir, config: &ProxyConfig) -> Proxy {
        Proxy::try_start(dir, config).unwrap_or_else(|log| panic!("proxy did not start:\n{log}"))
    }

    /// Starts the proxy and waits until it accepts connections; on failure, its log.
    pub fn try_start(dir: &tempfile::TempDir, config: &ProxyConfig) -> Result<Proxy, String> {
        Proxy::spawn(dir, config, &[])
    }

    /// Starts `pkb-edge run` with extra arguments (`--log-format json`). Standard
    /// error (the log, at debug level for pkb-edge) and standard output (the audit log unless
    /// the config names a file) each go to a file in `dir`.
    pub fn spawn(
        dir: &tempfile::TempDir,
        config: &ProxyConfig,
        extra_args: &[&str],
    ) -> Result<Proxy, String> {
        let (mut child, log, out) = launch(dir, config, &["run"], extra_args);
        let deadline = Instant::now() + Duration::from_secs(30);
        let listening = || std::net::TcpStream::connect(("127.0.0.1", config.port)).is_ok();
        match until(&mut child, deadline, Duration::from_millis(20), listening) {
            Ok(()) => Ok(Proxy {
                child: Some(child),
                config: config.clone(),
                log,
                out,
            }),
            Err(NotReady::Exited(_)) => Err(read_log(&log)),
            Err(NotReady::TimedOut) => {
                drop(child);
                Err(format!("not listening after 30 s\n{}", read_log(&log)))
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.config.url(path)
    }

    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Everything the process wrote: standard output (audit lines) and standard error (logs).
    pub fn output(&self) -> String {
        format!("{}\n{}", read_log(&self.out), read_log(&self.log))
    }

    /// The audit lines it wrote to standard output, parsed.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        read_log(&self.out)
            .lines()
            .filter(|l| l.contains("\"type\":\"audit\""))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").0.id()
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(30))
    }

    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit by itself (killed if it has not within `within`).
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                panic!("proxy did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A graceful upgrade as an operator runs it: a new process with `--upgrade`, then SIGQUIT
    /// to this one once the new one waits for the sockets. Returns the new process, serving.
    pub fn upgrade(&self, dir: &tempfile::TempDir) -> Proxy {
        let sock = &self.config.upgrade_sock;
        let _ = std::fs::remove_file(sock);
        let (mut child, log, out) = launch(dir, &self.config, &["run", "--upgrade"], &[]);
        let deadline = Instant::now() + Duration::from_secs(30);
        let every = Duration::from_millis(10);
        if let Err(e) = until(&mut child, deadline, every, || sock.exists()) {
            e.fail("no upgrade socket", &log);
        }
        self.signal("QUIT");
        let started = || read_log(&log).contains("pkb-edge starting");
        if let Err(e) = until(&mut child, deadline, every, started) {
            e.fail("new process not ready", &log);
        }
        Proxy {
            child: Some(child),
            config: self.config.clone(),
            log,
            out,
        }
    }
}

/// Numbers each process a test binary starts, for its file names.
static STARTED: AtomicUsize = AtomicUsize::new(0);

/// Writes `config` to a file in `dir` and starts `pkb-edge {args} --config <file> {extra_args}`,
/// its standard error (the log, at debug level for pkb-edge) and standard output each to a file
/// in `dir`. Returns the process and those two files.
fn launch(
    dir: &tempfile::TempDir,
    config: &ProxyConfig,
    args: &[&str],
    extra_args: &[&str],
) -> (Killed, PathBuf, PathBuf) {
    let n = STARTED.fetch_add(1, Ordering::Relaxed);
    let port = config.port;
    let conf_path = dir.path().join(format!("pkb-edge-{port}-{n}.toml"));
    std::fs::write(&conf_path, config.toml()).unwrap();
    let log = dir.path().join(format!("proxy-{port}-{n}.log"));
    let out = dir.path().join(format!("proxy-{port}-{n}.out"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_pkb-edge"));
    if let Some(limit) = config.descriptor_limit {
        limit_descriptors(&mut command, limit);
    }
    if config.log_unsafe_debug {
        command.env("PKB_EDGE_LOG_UNSAFE_DEBUG", "1");
    } else {
        command.env_remove("PKB_EDGE_LOG_UNSAFE_DEBUG");
    }
    let child = command
        .args(args)
        .arg("--config")
        .arg(&conf_path)
        .args(extra_args)
        .env(
            "PKB_EDGE_LOG",
            config
                .log_filter
                .as_deref()
                .unwrap_or("info,pkb_edge=debug"),
        )
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (Killed(child), log, out)
}

/// Starts the command with at most `limit` open descriptors (soft and hard limit).
fn limit_descriptors(command: &mut Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only calls setrlimit, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Why a process did not get ready.
enum NotReady {
    Exited(ExitStatus),
    TimedOut,
}

impl NotReady {
    /// Fails the test: `not_ready` (or that the process exited), with its log.
    fn fail(self, not_ready: &str, log: &Path) -> ! {
        match self {
            NotReady::Exited(status) => {
                panic!("new process exited ({status}):\n{}", read_log(log))
            }
            NotReady::TimedOut => panic!("{not_ready}:\n{}", read_log(log)),
        }
    }
}

/// Polls `ready` every `every` until it holds, unless `child` exits or `deadline` passes first.
fn until(
    child: &mut Killed,
    deadline: Instant,
    every: Duration,
    ready: impl Fn() -> bool,
) -> Result<(), NotReady> {
    loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(NotReady::Exited(status));
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(NotReady::TimedOut);
        }
        std::thread::sleep(every);
    }
}

pub fn read_log(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}
