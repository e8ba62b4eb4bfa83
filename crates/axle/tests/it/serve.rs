//! `axle version`, `axle config check` and `axle serve`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use serde_json::json;

use crate::helpers::*;

#[test]
fn version_prints_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = axle(dir.path()).arg("version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("axle {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn config_check_accepts_good_files_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let path = dir.path().join("axle.toml");
        std::fs::write(&path, text).unwrap();
        axle(dir.path())
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let good = check(
        "data_dir = \"/var/lib/axle\"\n[log]\nformat = \"text\"\n[services.vehicle]\nlisten = \"0.0.0.0:9203\"\n",
    );
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("ok"));

    for (text, key) in [
        ("[databse]\nurl = \"postgres://x\"\n", "databse"),
        ("[events]\nmax_attempts = \"five\"\n", "events.max_attempts"),
        (
            "[services.vehicle]\nlisten = 9203\n",
            "services.vehicle.listen",
        ),
        ("[kv]\nredis_url = \"memcached://x\"\n", "kv.redis_url"),
    ] {
        let out = check(text);
        assert!(!out.status.success(), "{text} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "expected {key} in {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
}

#[tokio::test]
async fn serve_with_no_arguments_answers_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::serve(dir.path(), port, &[]).await;
    let masterdata_port = server.masterdata_port;
    assert!(
        dir.path().join("axle-data/vehicle.sqlite").exists(),
        "the default data dir is created"
    );

    let token = server.token(dir.path());
    let unsigned = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/vehicles"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        unsigned.status(),
        401,
        "the service checks the caller itself"
    );
    let created = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/vehicles"))
        .bearer_auth(&token)
        .json(
            &json!({"vin": "1HGCM82633A004352", "make": "Honda", "model": "Accord", "year": 2003}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // The gateway routes /api/<service>/ to each service of the process, with a token.
    let url = format!(
        "http://127.0.0.1:{}/api/vehicle/vehicles",
        server.gateway_port
    );
    let refused = reqwest::get(&url).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(
        refused.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let health = format!(
        "http://127.0.0.1:{}/api/vehicle/healthz",
        server.gateway_port
    );
    assert_eq!(
        reqwest::get(&health).await.unwrap().status(),
        200,
        "health stays open"
    );
    let through_gateway: serde_json::Value = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(through_gateway["items"][0]["vin"], "1HGCM82633A004352");
    assert!(
        dir.path().join("axle-data/gateway/admin_key").exists(),
        "the Admin API key is generated on first start"
    );

    // `axle masterdata check` asks the running master data to compare with the vehicle service.
    let check = || {
        let mut cmd = server.command(dir.path());
        cmd.args(["masterdata", "check"]).env(
            "AXLE__SERVICES__MASTERDATA__LISTEN",
            format!("127.0.0.1:{masterdata_port}"),
        );
        run_to_end(cmd, Duration::from_secs(30))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let report = loop {
        let out = check();
        if out.status.success() {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never in sync: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(
        (report["in_sync"].clone(), report["checked"].clone()),
        (json!(true), json!(1))
    );

    let out = server.terminate();
    assert!(
        out.status.success(),
        "exit status {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("http://127.0.0.1:{port}")),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines() {
        let log: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
        assert!(log["level"].is_string());
    }
    assert!(stderr.contains("\"stopped\""), "{stderr}");

    // The data survives the restart.
    let server = Server::serve(dir.path(), port, &[]).await;
    let list: serde_json::Value = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/vehicles"))
        .bearer_auth(server.token(dir.path()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["vin"], "1HGCM82633A004352");
    assert!(server.terminate().status.success());
}

#[test]
fn start_up_failures_are_one_clear_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    std::fs::write(dir.path().join("a-file"), "not a directory").unwrap();
    let free = free_port();
    let listen = format!("127.0.0.1:{free}");

    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["serve"],
            vec![(
                "AXLE__SERVICES__VEHICLE__LISTEN",
                format!("127.0.0.1:{busy_port}"),
            )],
            "cannot listen on",
        ),
        (
            vec!["serve", "--data-dir", "a-file/data"],
            vec![("AXLE__SERVICES__VEHICLE__LISTEN", listen.clone())],
            "data directory",
        ),
        (
            vec!["serve"],
            vec![("AXLE__DATABASE__URLL", "postgres://x".into())],
            "urll",
        ),
        (
            vec!["serve", "--config", "missing.toml"],
            vec![],
            "missing.toml",
        ),
        (
            vec!["serve", "--only", "garage"],
            vec![],
            "unknown service \"garage\"",
        ),
        (
            vec!["serve"],
            vec![
                (
                    "AXLE__DATABASE__URL",
                    "postgres://postgres@127.0.0.1:1/none".into(),
                ),
                ("AXLE__SERVICES__VEHICLE__LISTEN", listen.clone()),
            ],
            "database for identity",
        ),
        (
            vec!["serve"],
            vec![
                ("AXLE__EVENTS__AMQP_URL", "amqp://127.0.0.1:1/%2f".into()),
                ("AXLE__SERVICES__VEHICLE__LISTEN", listen.clone()),
            ],
            "event bus",
        ),
        (
            vec!["serve"],
            vec![
                ("AXLE__KV__REDIS_URL", "redis://127.0.0.1:1".into()),
                ("AXLE__SERVICES__VEHICLE__LISTEN", listen.clone()),
            ],
            "kv store",
        ),
    ];
    for (args, env, expected) in cases {
        let mut cmd = axle(dir.path());
        cmd.args(&args).envs(env.iter().map(|(k, v)| (k, v)));
        let out = run_to_end(cmd, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?} succeeded");
        assert!(
            stderr.contains(expected),
            "{args:?} {env:?}: expected {expected:?} in {stderr}"
        );
        let last = stderr.trim().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("axle: "),
            "the failure is the last line: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    drop(busy);
}

// Multi-threaded: the collector must keep serving while the test blocks waiting for exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_exported_over_otlp_with_the_callers_trace_id() {
    // A stand-in OTLP/HTTP collector that keeps what it receives.
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = received.clone();
    let collector = axum::Router::new().route(
        "/v1/traces",
        post(move |body: String| {
            sink.lock().unwrap().push(body);
            async { "{}" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, collector).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let endpoint = format!("http://{collector_addr}/v1/traces");
    let server = Server::serve(
        dir.path(),
        port,
        &[("AXLE__TELEMETRY__OTLP_ENDPOINT", endpoint)],
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let token = server.token(dir.path());
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/vehicles"))
        .bearer_auth(token)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let out = server.terminate();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(trace_id),
        "the log line carries the caller's trace id: {stderr}"
    );
    let exported = received.lock().unwrap().join("\n");
    assert!(
        exported.contains(trace_id),
        "exported spans continue the caller's trace: {exported}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_and_every_file_holding_secrets_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::serve(dir.path(), port, &[]).await;
    let data = dir.path().join("axle-data");
    let mode = |path: &std::path::Path| {
        let metadata = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        metadata.permissions().mode() & 0o777
    };
    // The snapshot is saved once the first configuration is read.
    let last_good = data.join("gateway/last_good.json");
    for _ in 0..100 {
        if last_good.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for private in [data.clone(), data.join("gateway")] {
        assert_eq!(mode(&private), 0o700, "{private:?}");
    }
    let mut files = vec![last_good, data.join("gateway/admin_key")];
    for db in ["gateway", "vehicle", "masterdata", "events"] {
        for suffix in ["", "-wal", "-shm"] {
            files.push(data.join(format!("{db}.sqlite{suffix}")));
        }
    }
    for file in files {
        assert_eq!(mode(&file), 0o600, "{file:?}");
    }
    assert!(server.terminate().status.success());
}

/// Every service's OpenAPI document, the Admin API's included, passes a validator written by
/// others (`openapi-spec-validator` from PyPI, named by `AXLE_TEST_OPENAPI_VALIDATOR`).
#[tokio::test]
async fn every_openapi_document_passes_the_validator() {
    let validator =
        axle_core::testing::tool("AXLE_TEST_OPENAPI_VALIDATOR", "openapi-spec-validator");
    let dir = tempfile::tempdir().unwrap();
    let (vehicle, admin) = (free_port(), free_port());
    let server = Server::serve(
        dir.path(),
        vehicle,
        &[(
            "AXLE__SERVICES__GATEWAY__ADMIN_LISTEN",
            format!("127.0.0.1:{admin}"),
        )],
    )
    .await;
    let through_gateway = |name| {
        format!(
            "http://127.0.0.1:{}/api/{name}/openapi.json",
            server.gateway_port
        )
    };
    let own = |port| format!("http://127.0.0.1:{port}/openapi.json");
    let services = [
        ("vehicle", own(vehicle)),
        ("masterdata", own(server.masterdata_port)),
        ("identity", own(server.identity_port)),
        ("market", through_gateway("market")),
        ("order", through_gateway("order")),
        ("finance", through_gateway("finance")),
        ("saga", through_gateway("saga")),
        ("gateway", own(admin)),
    ];
    for (name, url) in services {
        let document: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        assert!(
            document["paths"].as_object().is_some_and(|p| !p.is_empty()),
            "{name} documents its paths"
        );
        let Some(validator) = &validator else {
            continue;
        };
        let file = dir.path().join(format!("{name}.json"));
        std::fs::write(&file, document.to_string()).unwrap();
        let out = std::process::Command::new(validator)
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("AXLE_TEST_OPENAPI_VALIDATOR={validator}: {e}"));
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(server.terminate().status.success());
}

#[tokio::test]
async fn the_banner_names_every_listener_and_text_logs_to_a_pipe_have_no_colours() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::serve(dir.path(), port, &[("AXLE__LOG__FORMAT", "text".into())]).await;
    let out = server.terminate();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for listener in [
        "gateway  http://",
        "gateway  https://",
        "metrics  http://",
        "admin    http://",
    ] {
        assert!(stdout.contains(listener), "{listener} in {stdout}");
    }
    assert!(stdout.contains("no certificate yet"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stopped"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr:?}"
    );
}
