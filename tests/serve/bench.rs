//! `smelt bench-serve` against the server: every request of every level is counted, with its
//! tokens, and the latencies are real measurements; with no server it fails naming the URL.

use super::*;

#[test]
fn bench_serve_reports_each_concurrency_level() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let args = ["bench-serve", "--url", &server.url, "--concurrency", "1,4", "--requests", "4"];
    let more = ["--prompt-words", "8", "--max-tokens", "3", "--json", json_path.to_str().unwrap()];
    let (stdout, _) = common::smelt_ok(&[&args[..], &more].concat());
    assert!(
        stdout.contains("concurrency   1: 4 requests") && stdout.contains("concurrency   4: 4 requests"),
        "{stdout}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(report["model"], NAME);
    let levels = report["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    for (level, concurrency) in levels.iter().zip([1, 4]) {
        assert_eq!(level["concurrency"], concurrency);
        assert_eq!(level["requests"], 4);
        assert_eq!(level["output_tokens"], 12, "{level}");
        for key in ["request_throughput", "output_tokens_per_s", "ttft_ms_p50", "itl_ms_p50"] {
            assert!(level[key].as_f64().unwrap() > 0.0, "{key}: {level}");
        }
        assert!(level["ttft_ms_p99"].as_f64() >= level["ttft_ms_p50"].as_f64(), "{level}");
    }
    server.wait_drained(Duration::from_secs(5));
    assert_eq!(server.metric("smelt_kv_blocks_used"), 0.0);
    // Prometheus text: every metric's TYPE line names a type (the hit rate's had its help
    // there), and its HELP line comes first.
    let text = get_text(&format!("{}/metrics", server.url));
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate().filter(|(_, l)| l.starts_with("# TYPE ")) {
        let parts: Vec<&str> = line.split(' ').collect();
        assert!(parts.len() == 4 && ["counter", "gauge", "histogram"].contains(&parts[3]), "{line}");
        assert!(i > 0 && lines[i - 1].starts_with(&format!("# HELP {} ", parts[2])), "{line}");
    }
}

#[test]
fn bench_serve_without_a_server_names_the_url() {
    let out = common::smelt(&["bench-serve", "--url", "http://127.0.0.1:9", "--concurrency", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("http://127.0.0.1:9/v1/models"), "{stderr}");
}
