//! The binary itself: `check` errors, `serve` flags, SIGTERM.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mirrorctl");

fn write_tmp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mirrorctl-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let p = dir.join(name);
    std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write");
    p
}

fn check(path: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run mirrorctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = "\
listeners: [127.0.0.1:8080]
services:
  - name: v1
    endpoints: [127.0.0.1:9001]
  - name: v2
    endpoints: [{address: 127.0.0.1:9002}]
routes:
  - name: default
    route: [{destination: v1}]
    mirrors: [{destination: v2, percent: 10}]
";

#[test]
fn check_accepts_a_good_config() {
    let p = write_tmp("good.yaml", GOOD);
    let (code, out, err) = check(&p);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ok (2 services, 1 routes, 1 mirrors)"),
        "{out}"
    );
}

#[test]
fn check_names_file_line_column_and_field() {
    let cases = [
        (
            "unknown-service.yaml",
            GOOD.replace("destination: v2", "destination: v3"),
            ":10:29: routes[0].mirrors[0].destination: unknown service `v3` (services: v1, v2)",
        ),
        (
            "percent.yaml",
            GOOD.replace("percent: 10", "percent: 120"),
            ":10:42: routes[0].mirrors[0].percent: 120 is not a percentage between 0 and 100",
        ),
        (
            "typo.yaml",
            GOOD.replace("    route:", "    rute:"),
            ":9:5: unknown field `rute`",
        ),
        (
            "port.yaml",
            GOOD.replace("[127.0.0.1:9001]", "[127.0.0.1]"),
            ":4:17: services[0].endpoints[0]: `127.0.0.1` has no port",
        ),
        (
            "syntax.yaml",
            "services: [\n".to_owned(),
            ":1:11: unclosed bracket",
        ),
    ];
    for (name, text, want) in cases {
        let p = write_tmp(name, &text);
        let (code, _, err) = check(&p);
        assert_eq!(code, 1, "{name}: {err}");
        let expected = format!("{}{want}", p.display());
        assert!(
            err.starts_with(&expected),
            "{name}:\n got: {err}\nwant: {expected}"
        );
    }
}

#[test]
fn serve_rejects_bad_flags_with_the_flag_name() {
    let out = Command::new(BIN)
        .args([
            "serve",
            "--primary",
            "http://127.0.0.1:1",
            "--mirror-percent",
            "101",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--mirror-percent: 101 is not between 0 and 100"),
        "{err}"
    );
    // A zero timeout would close every connection: refused, by name.
    for flag in ["--header-timeout", "--send-timeout", "--body-timeout"] {
        let out = Command::new(BIN)
            .args(["serve", "--primary", "http://127.0.0.1:1", flag, "0s"])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{flag}: must be more than 0")),
            "{err}"
        );
    }
}

#[test]
fn serve_stops_on_sigterm() {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--primary",
            "http://127.0.0.1:9",
            "--access-log",
            "off",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until it logs that it serves (bounded).
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("serving line");
    assert!(line.contains("serving"), "{line}");
    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            assert!(st.success(), "{st:?}");
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("mirrorctl did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check_files(paths: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).arg("check");
    for p in paths {
        cmd.args(["--config", p]);
    }
    let out = cmd.output().expect("run mirrorctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_example_passes_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for dir in ["native", "istio"] {
        let mut files: Vec<String> = std::fs::read_dir(root.join(dir))
            .expect("examples dir")
            .filter_map(|e| e.ok())
            .map(|e| format!("examples/{dir}/{}", e.file_name().to_string_lossy()))
            .filter(|p| p.ends_with(".yaml"))
            .collect();
        files.sort();
        for f in &files {
            // The seed VirtualService runs with the DestinationRule/ServiceEntry file beside it.
            let set: Vec<&str> = match f.as_str() {
                "examples/istio/seed-destinations.yaml" => continue,
                "examples/istio/seed-virtualservice.yaml" => {
                    vec![f, "examples/istio/seed-destinations.yaml"]
                }
                _ => vec![f],
            };
            let (code, out, err) = check_files(&set);
            assert_eq!(code, 0, "{f}: {err}");
            assert!(out.contains(": ok ("), "{f}: {out}");
            assert!(!err.contains("warning"), "{f} has warnings: {err}");
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}

#[test]
fn broken_files_get_the_exact_error() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/broken");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "{cases:?}");
    for name in cases {
        let rel = format!("tests/golden/broken/{name}");
        let want = std::fs::read_to_string(dir.join(name.replace(".yaml", ".err")))
            .expect("expected .err file");
        let (code, _, err) = check_files(&[&rel]);
        assert_eq!(code, 1, "{rel}");
        assert_eq!(err, want, "{rel}");
    }
}

#[test]
fn mesh_only_fields_are_warned_about_not_dropped() {
    let p = write_tmp(
        "gateways.yaml",
        "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: ['*']
  gateways: [mesh]
  http:
    - match: [{sourceLabels: {app: x}, uri: {prefix: /}}]
      mirrorPercent: 5
      mirror: {host: web.default.svc.cluster.local}
      route: [{destination: {host: web.default.svc.cluster.local}}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: web}
spec:
  hosts: [web.default.svc.cluster.local]
  ports: [{number: 80, name: http}]
  resolution: DNS
  endpoints: [{address: localhost}]
",
    );
    let (code, out, err) = check(&p);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ok (1 services, 1 routes, 1 mirrors)"),
        "{out}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines.iter().any(|l| l.contains(
            ":6:13: document 1 (VirtualService web): spec.gateways: mesh-only field, ignored"
        )),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("spec.http[0].match[0].sourceLabels: mesh-only field, ignored")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("spec.http[0].mirrorPercent: deprecated; use mirrorPercentage")),
        "{err}"
    );
}

#[test]
fn sighup_reloads_and_a_bad_file_is_refused() {
    let dir = std::env::temp_dir().join(format!("mirrorctl-hup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp");
    let cfg = dir.join("mirror.yaml");
    let write = |pct: &str| {
        std::fs::write(
            &cfg,
            format!(
                "listeners: [127.0.0.1:0]\nadmin: 127.0.0.1:0\naccess_log: 'off'\nservices:\n  - {{name: v1, endpoints: ['127.0.0.1:9']}}\n  - {{name: v2, endpoints: ['127.0.0.1:9']}}\nroutes:\n  - {{name: default, route: [{{destination: v1}}], mirrors: [{{destination: v2, percent: {pct}}}]}}\n"
            ),
        )
        .expect("write")
    };
    write("10");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--state"])
        .arg(dir.join("state.json"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| -> String {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                if l.contains(needle) {
                    return l;
                }
            }
        }
        panic!("no log line with `{needle}`");
    };
    let admin_line = wait_for("admin listening");
    let admin = admin_line
        .rsplit("admin=")
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let hup = |pid: u32| {
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill")
    };
    std::fs::write(&cfg, "routes: [\n").expect("break");
    hup(child.id());
    let refused = wait_for("reload refused");
    assert!(refused.contains("unclosed bracket"), "{refused}");
    write("50");
    hup(child.id());
    wait_for("config reloaded");
    let out = Command::new(BIN)
        .args(["status", "--admin", &admin])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mirror v2 50%"), "{text}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let end = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_non_loopback_admin_listener_needs_a_token() {
    let out = Command::new(BIN)
        .args([
            "serve",
            "--primary",
            "http://127.0.0.1:9",
            "--admin",
            "0.0.0.0:0",
        ])
        .env_remove("MIRRORCTL_TOKEN")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "--admin: 0.0.0.0:0 is not loopback: a non-loopback admin listener needs a token"
        ),
        "{err}"
    );
}
