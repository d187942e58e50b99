//! The bundled clients, run against the real binary: `clients/js`'s own
//! `node --test` suite (tests/run.sh runs `npm ci` there first), and the
//! chat example in headless Chromium, over WebSocket and over the fallbacks.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_js_client_suite_passes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js");
    assert!(
        std::path::Path::new(&format!("{dir}/node_modules/ws")).exists(),
        "{dir}/node_modules is missing: run `bash tests/run.sh` (it runs npm ci there)"
    );
    let tests: Vec<String> = std::fs::read_dir(format!("{dir}/test"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".test.js"))
        .collect();
    assert!(!tests.is_empty());
    // Node's EventSource (for the SSE tests) is behind a flag in Node 20.18+
    // and 22; an older Node refuses the flag (then those tests skip).
    let eventsource = Command::new("node")
        .args(["--experimental-eventsource", "-e", "0"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut node = Command::new("node")
        .args(eventsource.then_some("--experimental-eventsource"))
        .args(["--test", "--test-force-exit", "--test-timeout", "60000"])
        .args(&tests)
        .current_dir(dir)
        .env("SHARDCAST_BIN", env!("CARGO_BIN_EXE_shardcast"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut stdout = node.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    // The suite takes ~10 s; a hung one must not hang the whole test run.
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            break node.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = reader.join().unwrap();
    let mut stderr = String::new();
    let _ = node.stderr.take().unwrap().read_to_string(&mut stderr);
    assert!(status.success(), "node --test failed ({status}):\n{stdout}\n{stderr}");
    assert!(stdout.contains("# fail 0"), "{stdout}");
}

/// Runs the Chromium test `tests/browser/<script>` against this build's
/// binary: it must print "ok" and leave a real screenshot at each of
/// `target/<shot>`.
fn run_chromium_test(script: &str, shots: &[&str]) {
    let root = env!("CARGO_MANIFEST_DIR");
    assert!(
        std::path::Path::new(&format!("{root}/tests/browser/node_modules/playwright-core")).exists()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "playwright-core or chromium missing: run `bash tests/run.sh` (it installs both)"
    );
    let shots: Vec<String> = shots.iter().map(|s| format!("{root}/target/{s}")).collect();
    for s in &shots {
        let _ = std::fs::remove_file(s);
    }
    let out = Command::new("node")
        .arg(format!("{root}/tests/browser/{script}"))
        .env("SHARDCAST_BIN", env!("CARGO_BIN_EXE_shardcast"))
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.trim() == "ok", "{script} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for s in &shots {
        assert!(std::fs::metadata(s).map(|m| m.len()).unwrap_or(0) > 10_000, "a real screenshot at {s}");
    }
}

/// The chat example in two headless Chromium pages on two nodes sharing a
/// Redis, with one node killed and restarted (`tests/browser/chat.mjs`).
#[test]
fn the_chat_example_works_across_nodes_and_a_node_restart_in_chromium() {
    run_chromium_test("chat.mjs", &["chat-alice.png", "chat-bob.png"]);
}

/// The chat example in headless Chromium with `WebSocket` made to fail: it
/// falls back to HTTP-streaming, then (without `ReadableStream`) to SSE, and
/// talks both ways with a WebSocket user on another node, across a restart
/// of its own node (`tests/browser/chat-fallback.mjs`, issue 26).
#[test]
fn the_chat_example_falls_back_to_http_streaming_and_sse_in_chromium() {
    run_chromium_test("chat-fallback.mjs", &["chat-fallback-http_stream.png", "chat-fallback-sse.png"]);
}
