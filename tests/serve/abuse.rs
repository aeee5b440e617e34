//! What a server must survive: malformed bodies (400 naming the field, never a crash), a
//! client that goes away mid-stream (its KV blocks free at once), more requests than it
//! takes (429, then recovery), a missing API key (401), and SIGTERM (in-flight work
//! finishes, exit 0).

use std::io::Read as _;

use serde_json::{json, Value};

use super::*;

/// Opens a stream and reads its first chunk; the response is returned still open.
fn open_stream(server: &Server, max_tokens: usize) -> ureq::BodyReader<'static> {
    let body = completion("Tell me a long story", max_tokens, json!({"stream": true}));
    let response = client().post(format!("{}/v1/completions", server.url)).send_json(&body).unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut response = response.into_body().into_reader();
    let mut first = [0u8; 16];
    response.read_exact(&mut first).unwrap();
    assert_eq!(&first[..6], b"data: ");
    response
}

#[test]
fn malformed_bodies_are_400s_naming_the_field_and_never_crash_the_server() {
    let server = Server::start(&[]);
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let mut random_bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                rng_state as u8
            })
            .collect()
    };
    for n in [1, 7, 100, 5000] {
        for path in ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"] {
            let (status, body) = server.post_bytes(path, random_bytes(n));
            assert_eq!(status, 400, "{path} with {n} random bytes: {body}");
            assert!(body["error"]["message"].as_str().unwrap().contains("invalid request body"), "{body}");
        }
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{{\"prompt\": {}1{}}}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    for body in [deep, deep_object, "{\"prompt\": \"x\"".into(), "{\"prompt\": \"x\"} trailing".into(), "".into()] {
        let (status, reply) = server.post_bytes("/v1/completions", body.into_bytes());
        assert_eq!(status, 400, "{reply}");
    }
    // Numbers past every type: named by field.
    let huge = [
        (r#"{"prompt": "x", "max_tokens": 1e400}"#, "max_tokens"),
        (r#"{"prompt": "x", "max_tokens": 18446744073709551616}"#, "max_tokens"),
        (r#"{"prompt": "x", "temperature": -1e999}"#, "temperature"),
        (r#"{"prompt": "x", "seed": 99999999999999999999999999}"#, "seed"),
        (r#"{"prompt": [1, 4294967296]}"#, "prompt"),
    ];
    for (body, param) in huge {
        let (status, reply) = server.post_bytes("/v1/completions", body.as_bytes().to_vec());
        assert_eq!((status, reply["error"]["param"].as_str()), (400, Some(param)), "{body}: {reply}");
    }
    let chat = |extra: Value| {
        let mut body = json!({"model": NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
        merge(&mut body, extra);
        body
    };
    let long_prompt: Vec<u32> = vec![9707; 5000];
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/v1/completions", completion("x", 4, json!({"max_tokens": -1})), "max_tokens"),
        ("/v1/completions", completion("x", 4, json!({"max_tokens": 0})), "max_tokens"),
        ("/v1/completions", completion("x", 4, json!({"max_tokens": 5000})), "max_tokens"),
        ("/v1/completions", completion("x", 4, json!({"temperature": "hot"})), "temperature"),
        ("/v1/completions", completion("x", 4, json!({"temperature": -0.5})), "temperature"),
        ("/v1/completions", completion("x", 4, json!({"temperature": 1e300})), "temperature"),
        ("/v1/completions", completion("x", 4, json!({"top_p": 0})), "top_p"),
        ("/v1/completions", completion("x", 4, json!({"top_k": -2})), "top_k"),
        ("/v1/completions", completion("x", 4, json!({"n": 0})), "n"),
        ("/v1/completions", completion("x", 4, json!({"n": 100000})), "n"),
        ("/v1/completions", completion("x", 4, json!({"stop": ""})), "stop"),
        ("/v1/completions", completion("x", 4, json!({"stop": [1, 2]})), "stop"),
        ("/v1/completions", completion("x", 4, json!({"model": "gpt-4"})), "model"),
        ("/v1/completions", completion("x", 4, json!({"prompt": [1, 151936]})), "prompt"),
        ("/v1/completions", completion("x", 4, json!({"prompt": long_prompt})), "prompt"),
        ("/v1/completions", completion("x", 4, json!({"prompt": []})), "prompt"),
        ("/v1/completions", completion("x", 4, json!({"logprobs": 21})), "logprobs"),
        ("/v1/completions", json!({"max_tokens": 4}), "prompt"),
        ("/v1/chat/completions", chat(json!({"messages": [{"role": "robot", "content": "Hi"}]})), "messages[0].role"),
        ("/v1/chat/completions", chat(json!({"messages": []})), "messages"),
        ("/v1/chat/completions", chat(json!({"messages": "Hi"})), "messages"),
        (
            "/v1/chat/completions",
            chat(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})),
            "messages[0].content[0]",
        ),
        ("/v1/chat/completions", chat(json!({"logprobs": true, "top_logprobs": 50})), "top_logprobs"),
        (
            "/v1/chat/completions",
            chat(json!({"chat_template_kwargs": {"enable_thinking": "yes"}})),
            "chat_template_kwargs.enable_thinking",
        ),
        ("/detokenize", json!({"tokens": [1, 999999]}), "tokens"),
    ];
    for (path, body, param) in cases {
        let (status, reply) = server.post(path, &body);
        assert_eq!(status, 400, "{path} {body}: {reply}");
        assert_eq!(reply["error"]["param"], param, "{path} {body}: {reply}");
        assert_eq!(reply["error"]["type"], "invalid_request_error");
    }
    // Still serving, nothing held.
    assert_eq!(server.post("/v1/completions", &completion("Hello", 2, json!({}))).0, 200);
    server.wait_drained(Duration::from_secs(5));
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}

#[test]
fn a_client_that_goes_away_mid_stream_frees_its_kv_blocks_at_once() {
    let server = Server::start(&[]);
    let response = open_stream(&server, 3000);
    assert!(server.metric("smelt_kv_blocks_used") > 0.0);
    drop(response);
    server.wait_drained(Duration::from_secs(5));
    let generated = server.metric("smelt_generation_tokens_total");
    assert!(generated < 3000.0, "the sequence ran on after its client left: {generated} tokens");
}

#[test]
fn past_the_waiting_queue_requests_get_429_then_recover() {
    let server = Server::start(&["--max-batch", "1", "--max-waiting", "1"]);
    let running = open_stream(&server, 3000);
    // The second waits (the batch holds one); it is admitted before any token comes.
    let body = completion("Tell me a long story", 3000, json!({"stream": true}));
    let waiting = client().post(format!("{}/v1/completions", server.url)).send_json(&body).unwrap();
    assert_eq!(waiting.status().as_u16(), 200);
    let (status, reply) = server.post("/v1/completions", &completion("Hi", 2, json!({})));
    assert_eq!(status, 429, "{reply}");
    assert_eq!(reply["error"]["type"], "rate_limit_error");
    assert_eq!(server.metric("smelt_waiting_sequences") + server.metric("smelt_running_sequences"), 2.0);
    drop((running, waiting));
    server.wait_drained(Duration::from_secs(5));
    let (status, reply) = server.post("/v1/completions", &completion("Hi", 2, json!({})));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(server.metric("smelt_requests_total{endpoint=\"/v1/completions\",status=\"429\"}"), 1.0);
}

#[test]
fn an_api_key_is_required_on_the_api_only() {
    let server = Server::start(&["--api-key", "sesame"]);
    let url = format!("{}/v1/completions", server.url);
    let body = completion("Hi", 2, json!({}));
    let mut refused = client().post(&url).send_json(&body).unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(refused.body_mut().read_json::<Value>().unwrap()["error"]["type"], "authentication_error");
    let wrong = client().post(&url).header("Authorization", "Bearer open").send_json(&body).unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let right = client().post(&url).header("Authorization", "Bearer sesame").send_json(&body).unwrap();
    assert_eq!(right.status().as_u16(), 200);
    assert_eq!(client().get(format!("{}/health", server.url)).call().unwrap().status().as_u16(), 200);
}

#[test]
fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let mut server = Server::start(&[]);
    let mut response = open_stream(&server, 60);
    let killed = Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    response.read_to_string(&mut rest).unwrap();
    assert!(rest.ends_with("data: [DONE]\n\n"), "the stream was cut: {rest}");
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}
