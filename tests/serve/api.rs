//! OpenAI's semantics: chat and completions, whole and streamed, stop strings, `n`, seeds,
//! log-probabilities, usage, the model list, tokenize/detokenize and the metrics.

use serde_json::{json, Value};

use super::*;

#[test]
fn completions_and_chat_answer_what_generate_gives_alone() {
    let server = Server::start(&[]);
    let (status, models) = server.post_bytes("/v1/models", Vec::new());
    assert_eq!(status, 405, "GET only: {models}");
    let models: Value =
        client().get(format!("{}/v1/models", server.url)).call().unwrap().body_mut().read_json().unwrap();
    assert_eq!(models["data"][0]["id"], NAME);

    let want = generate_alone("The capital of France is", 12, &[]);
    let (status, body) = server.post("/v1/completions", &completion("The capital of France is", 12, json!({})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], want);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let prompt_ids: Value =
        server.post("/tokenize", &json!({"prompt": "The capital of France is"})).1["tokens"].clone();
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], prompt_ids.as_array().unwrap().len());
    assert_eq!(
        (usage["completion_tokens"].as_u64(), usage["total_tokens"].as_u64()),
        (Some(12), Some(12 + usage["prompt_tokens"].as_u64().unwrap()))
    );

    // The same prompt as token ids; seeded sampling as `generate --seed`.
    let by_ids = completion("", 12, json!({"prompt": prompt_ids}));
    assert_eq!(server.post("/v1/completions", &by_ids).1["choices"][0]["text"], want);
    let sampled =
        generate_alone("Hi", 10, &["--temperature", "0.9", "--top-k", "50", "--top-p", "0.95", "--seed", "42"]);
    let body = completion("Hi", 10, json!({"temperature": 0.9, "top_k": 50, "top_p": 0.95, "seed": 42}));
    assert_eq!(server.post("/v1/completions", &body).1["choices"][0]["text"], sampled);

    // A chat: the template with enable_thinking, the EOS not shown.
    let want = generate_alone("Hello!", 9, &["--chat", "--no-think"]);
    let chat = json!({"model": NAME, "messages": [{"role": "user", "content": "Hello!"}], "max_completion_tokens": 9,
                      "chat_template_kwargs": {"enable_thinking": false}});
    let (status, body) = server.post("/v1/chat/completions", &chat);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], want);
    let rendered = server
        .post("/tokenize", &json!({"messages": chat["messages"], "chat_template_kwargs": {"enable_thinking": false}}));
    assert_eq!(body["usage"]["prompt_tokens"], rendered.1["count"]);
}

#[test]
fn streams_stops_n_and_logprobs() {
    let server = Server::start(&["--reasoning-parser", "qwen3"]);
    let prompt = "Once upon a time";
    let whole = server.post("/v1/completions", &completion(prompt, 16, json!({}))).1;
    let text = whole["choices"][0]["text"].as_str().unwrap().to_string();

    // Streamed: the same text in pieces, the usage chunk last, then [DONE].
    let events = server.stream(
        "/v1/completions",
        &completion(prompt, 16, json!({"stream": true, "stream_options": {"include_usage": true}})),
    );
    let (texts, finishes) = streamed_text(&events, false);
    assert_eq!((texts, finishes), (vec![text.clone()], vec!["length".to_string()]));
    assert!(events.len() > 4, "one chunk per token or so: {events:?}");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(
        (usage["choices"].as_array().map(Vec::len), usage["usage"]["completion_tokens"].as_u64()),
        (Some(0), Some(16))
    );

    // A chat stream opens with the role; with the reasoning parser a reply without <think>
    // is all content.
    let chat = json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 6, "stream": true});
    let events = server.stream("/v1/chat/completions", &chat);
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(
        (first["object"].as_str(), first["choices"][0]["delta"]["role"].as_str()),
        (Some("chat.completion.chunk"), Some("assistant"))
    );
    let (texts, _) = streamed_text(&events, true);
    let mut whole_chat = chat.clone();
    whole_chat["stream"] = false.into();
    let reply = server.post("/v1/chat/completions", &whole_chat).1;
    assert_eq!(reply["choices"][0]["message"]["content"], texts[0]);
    assert_eq!(reply["choices"][0]["message"]["reasoning_content"], Value::Null);

    // A stop string from the middle of the text: the text before it, finish_reason stop.
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = &text[..text.find(&stop).unwrap()];
    let stopped =
        server.post("/v1/completions", &completion(prompt, 16, json!({"stop": [stop.clone(), "never there"]}))).1;
    assert_eq!(
        (stopped["choices"][0]["text"].as_str(), stopped["choices"][0]["finish_reason"].as_str()),
        (Some(cut), Some("stop"))
    );
    let events = server.stream("/v1/completions", &completion(prompt, 16, json!({"stop": stop, "stream": true})));
    assert_eq!(streamed_text(&events, false), (vec![cut.to_string()], vec!["stop".to_string()]));

    // n = 3 seeded: choice i is the request alone with seed 5 + i.
    let sampling = json!({"temperature": 1.0, "top_k": 100});
    let mut body = completion(prompt, 8, sampling.clone());
    merge(&mut body, json!({"n": 3, "seed": 5}));
    let three = server.post("/v1/completions", &body).1;
    for i in 0..3u64 {
        let mut one = completion(prompt, 8, sampling.clone());
        one["seed"] = (5 + i).into();
        let alone = server.post("/v1/completions", &one).1;
        assert_eq!(three["choices"][i as usize]["text"], alone["choices"][0]["text"], "choice {i}");
    }
    assert_eq!(three["usage"]["completion_tokens"], 24);
    body["stream"] = true.into();
    let (texts, _) = streamed_text(&server.stream("/v1/completions", &body), false);
    let whole_texts: Vec<&str> =
        three["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert_eq!(texts, whole_texts);

    // Log-probabilities: the chosen token is the most likely one under greedy decoding.
    let body = json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 4, "logprobs": true, "top_logprobs": 3});
    let reply = server.post("/v1/chat/completions", &body).1;
    let content = reply["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    let joined: String = content.iter().map(|c| c["token"].as_str().unwrap()).collect();
    assert_eq!(joined, reply["choices"][0]["message"]["content"].as_str().unwrap());
    for c in content {
        let top = c["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["logprob"], c["logprob"]);
        assert!(c["logprob"].as_f64().unwrap() < 0.0 && top[1]["logprob"].as_f64() <= top[0]["logprob"].as_f64());
    }
    let legacy = server.post("/v1/completions", &completion(prompt, 3, json!({"logprobs": 2}))).1;
    let lp = &legacy["choices"][0]["logprobs"];
    assert_eq!((lp["tokens"].as_array().unwrap().len(), lp["top_logprobs"][0].as_object().unwrap().len()), (3, 2));
}

#[test]
fn tokenize_detokenize_health_and_metrics() {
    let server = Server::start(&[]);
    let ids = server.post("/tokenize", &json!({"prompt": "Hello world"})).1;
    assert_eq!(ids["tokens"], json!([9707, 1879]));
    assert_eq!(server.post("/detokenize", &json!({"tokens": [9707, 1879]})).1["prompt"], "Hello world");
    let health = client().get(format!("{}/health", server.url)).call().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    server.post("/v1/completions", &completion("Hello", 5, json!({})));
    assert_eq!(server.metric("smelt_generation_tokens_total"), 5.0);
    assert_eq!(server.metric("smelt_prompt_tokens_total"), 1.0);
    assert_eq!(server.metric("smelt_time_to_first_token_seconds_count"), 1.0);
    assert_eq!(server.metric("smelt_inter_token_latency_seconds_count"), 4.0);
    assert_eq!(server.metric("smelt_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"), 1.0);
    assert!(server.metric("smelt_kv_blocks_free") > 0.0);
}
