//! The benchmark harness itself works: a quick run of `ensync-bench e2e` with every Rust
//! adapter delivers every published event, with no error, and a quick `ensync-bench node`
//! counts its whole backlog. (Timings are not checked: benchmarks measure, they never
//! fail tests.)

use std::process::Command;

/// Runs `ensync-bench` with `args` plus `--json <tmp>`; asserts it succeeded; returns
/// its stdout and the JSON it wrote.
fn run_bench(args: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ensync-bench"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let doc = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (stdout, doc)
}

#[test]
fn e2e_quick_run_delivers_every_event_on_every_rust_adapter() {
    let (stdout, doc) = run_bench(&["e2e", "--quick", "--adapters", "tokio,h2,blocking,ws"]);
    assert!(stdout.contains("| seq-1k | tokio |"), "{stdout}");
    let results = doc["results"].as_array().unwrap();
    // 4 adapters x 5 scenarios.
    assert_eq!(results.len(), 20, "{doc:#}");
    for r in results {
        assert!(r["error"].is_null(), "{r}");
        let published = r["published"].as_u64().unwrap();
        assert!(published > 0, "{r}");
        let recipients = if r["scenario"] == "conc64-1k-10r" {
            10
        } else {
            1
        };
        assert_eq!(
            r["expected"].as_u64().unwrap(),
            published * recipients,
            "{r}"
        );
        assert_eq!(r["delivered"], r["expected"], "{r}");
        assert!(r["p50_us"].as_f64().unwrap() > 0.0, "{r}");
    }
}

#[test]
fn node_quick_run_keeps_the_whole_backlog_across_a_restart() {
    let (_, doc) = run_bench(&["node", "--quick"]);
    let sections: Vec<serde_json::Value> = serde_json::from_value(doc).unwrap();
    assert_eq!(sections.len(), 3, "{sections:#?}");
    let rows = |i: usize| -> Vec<Vec<String>> {
        serde_json::from_value(sections[i]["rows"].clone()).unwrap()
    };
    // Throughput: both commit modes, nothing failed.
    let throughput = rows(0);
    assert_eq!(throughput.len(), 4, "{throughput:?}");
    for row in &throughput {
        assert_eq!(
            row.last().map(String::as_str),
            Some("0"),
            "failed publishes: {row:?}"
        );
    }
    // Backlog: the node counts every published event, and again after the restart.
    let backlog = rows(1);
    let queued: Vec<&str> = backlog
        .iter()
        .filter(|r| r[0].contains("events queued"))
        .map(|r| r[1].as_str())
        .collect();
    assert_eq!(queued, ["20000", "20000"], "{backlog:?}");
    // Where the store's bytes go: the events table holds every queued event.
    let space = rows(2);
    assert!(
        space.iter().any(|r| r[0] == "events" && r[1] == "20000"),
        "{space:?}"
    );
}
