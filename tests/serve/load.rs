//! 64 streaming clients at once, greedy and seeded: each gets exactly what `smelt generate`
//! gives its request alone, none is lost, and every KV block is free afterwards.

use std::time::Instant;

use serde_json::json;

use super::*;

const CLIENTS: usize = 64;
const MAX_TOKENS: usize = 12;

#[test]
fn sixty_four_concurrent_streams_each_equal_to_the_request_alone() {
    let server = Server::start(&["--max-batch", "32"]);
    // 8 distinct requests (4 greedy, 4 seeded), 8 clients each, all after a shared preamble
    // of more than two 16-token KV blocks.
    let preamble =
        "You are a helpful assistant. Answer briefly, in plain words, and never repeat the question back to the user. ";
    let prompts = ["The capital of France is", "The capital of France was", "Hello there", "1, 2, 3,"];
    let requests: Vec<(String, Option<u64>)> =
        (0..8).map(|i| (format!("{preamble}{}", prompts[i % 4]), (i >= 4).then_some(100 + i as u64))).collect();
    let expected: Vec<String> = requests
        .iter()
        .map(|(prompt, seed)| match seed {
            None => generate_alone(prompt, MAX_TOKENS, &[]),
            Some(s) => {
                generate_alone(prompt, MAX_TOKENS, &["--temperature", "0.8", "--top-k", "40", "--seed", &s.to_string()])
            }
        })
        .collect();
    let t0 = Instant::now();
    let answers: Vec<(usize, Vec<String>, f64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (server, requests) = (&server, &requests);
                scope.spawn(move || {
                    let which = client % requests.len();
                    let (prompt, seed) = &requests[which];
                    let mut body = completion(prompt, MAX_TOKENS, json!({"stream": true}));
                    if let Some(seed) = seed {
                        merge(&mut body, json!({"temperature": 0.8, "top_k": 40, "seed": seed}));
                    }
                    let sent = Instant::now();
                    let events = server.stream("/v1/completions", &body);
                    (which, events, sent.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(answers.len(), CLIENTS);
    for (client, (which, events, _)) in answers.iter().enumerate() {
        let (texts, finishes) = streamed_text(events, false);
        assert_eq!(texts, [expected[*which].clone()], "client {client} (request {which})");
        assert_eq!(finishes, ["length"], "client {client}");
    }
    server.wait_drained(Duration::from_secs(5));
    let generated = server.metric("smelt_generation_tokens_total");
    assert_eq!(generated, (CLIENTS * MAX_TOKENS) as f64, "no token lost or doubled");
    assert!(server.metric("smelt_prefix_cache_hit_tokens_total") > 0.0, "equal prompts share KV blocks");
    let mut latencies: Vec<f64> = answers.iter().map(|a| a.2).collect();
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "load: {CLIENTS} streams x {MAX_TOKENS} tokens in {wall:.2}s ({:.0} tokens/s), request latency p50 {:.2}s p99 {:.2}s, KV blocks used after: {}",
        generated / wall,
        latencies[CLIENTS / 2],
        latencies[CLIENTS * 99 / 100],
        server.metric("smelt_kv_blocks_used"),
    );
    // The figures a run reports (`--nocapture` shows them).
    eprintln!("/metrics after the load:\n{}", get_text(&format!("{}/metrics", server.url)));
}
