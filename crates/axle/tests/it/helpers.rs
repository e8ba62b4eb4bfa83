//! Running the real `axle` binary in a temporary directory.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn axle(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_axle"));
    cmd.current_dir(dir);
    // Tests run in parallel: no service may take its default port.
    for key in [
        "AXLE__SERVICES__MASTERDATA__LISTEN",
        "AXLE__SERVICES__MARKET__LISTEN",
        "AXLE__SERVICES__ORDER__LISTEN",
        "AXLE__SERVICES__FINANCE__LISTEN",
        "AXLE__SERVICES__SAGA__LISTEN",
        "AXLE__SERVICES__IDENTITY__LISTEN",
        "AXLE__SERVICES__WEB__LISTEN",
        "AXLE__SERVICES__GATEWAY__LISTEN",
        "AXLE__SERVICES__GATEWAY__TLS_LISTEN",
        "AXLE__SERVICES__GATEWAY__ADMIN_LISTEN",
        "AXLE__SERVICES__GATEWAY__PROMETHEUS_LISTEN",
    ] {
        cmd.env(key, format!("127.0.0.1:{}", free_port()));
    }
    // The test's own environment must not leak configuration into the binary.
    for (key, _) in std::env::vars() {
        if key.starts_with("AXLE__") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A port no listener has, for an `axle serve` of a test to listen on. Taken below the
/// kernel's ephemeral range (32768 and up on Linux), where outgoing connections take their
/// local ports: a port the kernel handed out for `:0` may be some connection's by the time
/// the server binds it. Each test process walks its own stretch (by pid), and a port that
/// does not bind now is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 40) * 300;
    for _ in 0..300 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(base + n % 300).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{base}..{}", base + 300);
}

/// Runs a command that must fail on its own, returning its output.
pub fn run_to_end(cmd: Command, limit: Duration) -> Output {
    let (child, output) = spawn(cmd);
    wait_with_deadline(child, output, limit, "the command to end on its own")
}

/// What a child writes to its stdout and stderr, read as it comes — a pipe nobody reads fills
/// up, and the child then blocks on its next log line.
struct Drained {
    stdout: Pipe,
    stderr: Pipe,
}

/// A pipe's bytes so far, and the thread reading it to its end.
struct Pipe {
    read: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Pipe {
    fn all(self) -> Vec<u8> {
        let _ = self.reader.join();
        std::mem::take(&mut *self.read.lock().unwrap())
    }
}

fn drain(mut pipe: impl std::io::Read + Send + 'static) -> Pipe {
    let read = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = read.clone();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    Pipe { read, reader }
}

/// Starts `cmd` with its output drained.
fn spawn(mut cmd: Command) -> (Child, Drained) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = Drained {
        stdout: drain(child.stdout.take().unwrap()),
        stderr: drain(child.stderr.take().unwrap()),
    };
    (child, output)
}

/// Waits for `child` to exit and returns its output; kills it and fails after `limit`.
fn wait_with_deadline(mut child: Child, output: Drained, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait().unwrap());
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Output {
        status: waiter.join().unwrap(),
        stdout: output.stdout.all(),
        stderr: output.stderr.all(),
    }
}

/// A running `axle serve`, killed if the test ends without stopping it.
pub struct Server {
    pub child: Option<Child>,
    output: Option<Drained>,
    /// Where master data listens (vehicle's port is the caller's choice).
    pub masterdata_port: u16,
    /// Where the gateway's data plane listens.
    pub gateway_port: u16,
    /// Where identity listens.
    pub identity_port: u16,
}

impl Server {
    /// `axle <args>` for this server's data in `dir` (its gateway, so its issuer's URL).
    pub fn command(&self, dir: &Path) -> Command {
        let mut cmd = axle(dir);
        cmd.env(
            "AXLE__SERVICES__GATEWAY__LISTEN",
            format!("127.0.0.1:{}", self.gateway_port),
        );
        cmd
    }

    /// An access token of the command line's client (platform-admin, operator), from
    /// `axle token`.
    pub fn token(&self, dir: &Path) -> String {
        let mut cmd = self.command(dir);
        cmd.arg("token");
        let out = run_to_end(cmd, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "axle token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// `axle serve` in `dir` with the vehicle service on `port`, once it answers `/healthz`.
    pub async fn serve(dir: &Path, port: u16, env: &[(&str, String)]) -> Self {
        Self::serve_with(dir, port, &[], env).await
    }

    /// [`serve`](Self::serve) with more arguments after `serve` (`--demo`).
    pub async fn serve_with(dir: &Path, port: u16, args: &[&str], env: &[(&str, String)]) -> Self {
        let masterdata = free_port();
        let gateway = free_port();
        let identity = free_port();
        let mut cmd = axle(dir);
        cmd.arg("serve")
            .args(args)
            .env(
                "AXLE__SERVICES__IDENTITY__LISTEN",
                format!("127.0.0.1:{identity}"),
            )
            .env(
                "AXLE__SERVICES__GATEWAY__LISTEN",
                format!("127.0.0.1:{gateway}"),
            )
            .env(
                "AXLE__SERVICES__VEHICLE__LISTEN",
                format!("127.0.0.1:{port}"),
            )
            .env(
                "AXLE__SERVICES__MASTERDATA__LISTEN",
                format!("127.0.0.1:{masterdata}"),
            )
            .env(
                "AXLE__SERVICES__MASTERDATA__VEHICLE_URL",
                format!("http://127.0.0.1:{port}"),
            );
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let mut server = Self::start(cmd);
        server.masterdata_port = masterdata;
        server.gateway_port = gateway;
        server.identity_port = identity;
        server
            .wait_ready(&format!("http://127.0.0.1:{port}/healthz"))
            .await;
        server
            .wait_ready(&format!("http://127.0.0.1:{masterdata}/healthz"))
            .await;
        server
    }

    pub fn start(cmd: Command) -> Self {
        let (child, output) = spawn(cmd);
        Self {
            child: Some(child),
            output: Some(output),
            masterdata_port: 0,
            gateway_port: 0,
            identity_port: 0,
        }
    }

    /// Waits until `url` answers 200, failing if the process exits first.
    pub async fn wait_ready(&mut self, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(url).await
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let out = wait_with_deadline(
                    self.child.take().unwrap(),
                    self.output.take().unwrap(),
                    Duration::from_secs(5),
                    "axle's output",
                );
                panic!(
                    "axle exited with {status}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(Instant::now() < deadline, "{url} did not answer within 30s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the server has printed on stdout so far.
    pub fn stdout_so_far(&self) -> String {
        let output = self.output.as_ref().unwrap();
        String::from_utf8_lossy(&output.stdout.read.lock().unwrap()).into_owned()
    }

    /// Sends SIGTERM and waits for the process to exit on its own.
    pub fn terminate(mut self) -> Output {
        let child = self.child.take().unwrap();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let output = self.output.take().unwrap();
        wait_with_deadline(
            child,
            output,
            Duration::from_secs(30),
            "axle to stop after SIGTERM",
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub const ADMIN_KEY: &str = "identity-tests-admin-key";
pub const PASSWORD: &str = "correct horse battery staple";

/// `axle serve` with a known Admin API key and administrator password, and a client for it.
pub struct Axle {
    pub server: Server,
    pub dir: tempfile::TempDir,
    /// The Admin API's port.
    pub admin: u16,
    /// The gateway's address.
    pub site: String,
    pub client: reqwest::Client,
}

pub async fn start() -> Axle {
    let dir = tempfile::tempdir().unwrap();
    let (admin, vehicle) = (free_port(), free_port());
    let server = Server::serve(
        dir.path(),
        vehicle,
        &[
            (
                "AXLE__SERVICES__GATEWAY__ADMIN_LISTEN",
                format!("127.0.0.1:{admin}"),
            ),
            ("AXLE__SERVICES__GATEWAY__ADMIN_KEY", ADMIN_KEY.into()),
            ("AXLE_ADMIN_PASSWORD", PASSWORD.into()),
        ],
    )
    .await;
    let site = format!("http://127.0.0.1:{}", server.gateway_port);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Axle {
        server,
        dir,
        admin,
        site,
        client,
    }
}

impl Axle {
    pub async fn put_route(&self, id: &str, route: &Value) {
        let r = self
            .client
            .put(format!(
                "http://127.0.0.1:{}/apisix/admin/routes/{id}",
                self.admin
            ))
            .header("x-api-key", ADMIN_KEY)
            .json(route)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.site));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// Waits until `path` answers `status` (a route just written reaches the data plane).
    pub async fn until(&self, path: &str, token: Option<&str>, status: u16) -> reqwest::Response {
        for _ in 0..100 {
            let response = self.get(path, token).await;
            if response.status() == status {
                return response;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("{path} never answered {status}");
    }

    /// A user's access token, signing in through the form as a browser would.
    pub async fn sign_in(&self, username: &str, password: &str) -> String {
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let callback = format!("{}/auth/callback", self.site);
        let authorize = format!(
            "{}/api/identity/authorize?response_type=code&client_id=axle-web&scope=openid&state=s&redirect_uri={}&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256",
            self.site,
            urlencode(&callback)
        );
        let action = format!("{}/api/identity/authorize", self.site);
        let answer = axle_identity::testing::submit_sign_in(
            &browser, &authorize, &action, username, password,
        )
        .await;
        let location = answer.headers()["location"].to_str().unwrap().to_string();
        let code = query_param(&location, "code").expect("a code");
        let tokens: Value = self
            .client
            .post(format!("{}/api/identity/token", self.site))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &callback),
                ("client_id", "axle-web"),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens["access_token"].as_str().unwrap().to_string()
    }
}

pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
