//! The library API (`smelt::Model`) on the CPU backend: the same ids as the generation loop,
//! text prompts and chats through the model directory's tokenizer and template, stop strings,
//! and clear errors.

mod common;

use common::fixture_dir;
use smelt::models::{generate, LoadOptions, Qwen3Cpu};
use smelt::{ChatMessage, Error, GenerateParams, Model, ModelOptions, Prompt, SamplingParams};

/// A copy of a fixture model with the real Qwen3 tokenizer and chat template beside it.
fn model_dir_with_tokenizer() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/assets/qwen3");
    for (from, name) in [
        (fixture_dir("gqa1-tied-f32"), "config.json"),
        (fixture_dir("gqa1-tied-f32"), "model.safetensors"),
        (assets.clone(), "tokenizer.json"),
        (assets, "tokenizer_config.json"),
    ] {
        std::fs::copy(from.join(name), tmp.path().join(name)).unwrap();
    }
    tmp
}

fn collect(g: smelt::Generation<'_>) -> (Vec<u32>, String) {
    let chunks: Vec<smelt::Chunk> = g.collect::<Result<_, _>>().unwrap();
    (chunks.iter().map(|c| c.token).collect(), chunks.iter().map(|c| c.text.as_str()).collect())
}

#[test]
fn generate_gives_the_generation_loops_ids() {
    let dir = fixture_dir("gqa1-tied-f32");
    let params = GenerateParams { max_new_tokens: 10, ..GenerateParams::default() };
    let mut model = Model::load(&dir, &ModelOptions::default()).unwrap();
    let (ids, text) = collect(model.generate(Prompt::Ids(&[5, 17, 42, 7]), &params).unwrap());
    let mut cpu = Qwen3Cpu::load_with(&dir, LoadOptions::new(smelt::ir::DType::F32)).unwrap();
    let want = generate(&mut cpu, &[5, 17, 42, 7], common::greedy(&[5, 17, 42, 7], 10), |_, _| {}).unwrap().ids;
    assert_eq!(ids, want);
    assert_eq!(text, "", "no tokenizer: no text");
    // Seeded sampling through the API repeats.
    let sampled =
        GenerateParams { sampling: Some(SamplingParams { temperature: 0.9, seed: 5, ..Default::default() }), ..params };
    let a = collect(model.generate(Prompt::Ids(&[5, 17]), &sampled).unwrap()).0;
    let b = collect(model.generate(Prompt::Ids(&[5, 17]), &sampled).unwrap()).0;
    assert_eq!(a, b);
}

#[test]
fn text_prompts_chats_and_stop_strings_use_the_directorys_tokenizer() {
    let tmp = model_dir_with_tokenizer();
    let mut model = Model::load(tmp.path(), &ModelOptions::default()).unwrap();
    let params = GenerateParams { max_new_tokens: 16, ..GenerateParams::default() };
    // The fixture's vocabulary is the first 384 ids: this text encodes to [87, 0, 88, 0, 89].
    let prompt = "x!y!z";
    let (ids, text) = collect(model.generate(Prompt::Text(prompt), &params).unwrap());
    assert_eq!(text, model.tokenizer().unwrap().decode(&ids, false).unwrap(), "chunks add up to the decoded ids");
    // A chat renders the template: its `<|im_start|>` is past this vocabulary, a clear error.
    let turn = [ChatMessage::new("user", "Hi")];
    let err = model.chat(&turn, Some(false), &params).err().unwrap();
    assert!(matches!(err, Error::Model(smelt::models::ModelError::TokenOutOfRange { id: 151644, .. })), "{err}");
    // A stop string from the middle of the text: the output ends just before it.
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let stopped = GenerateParams { stop: vec![stop.clone()], ..params };
    let (_, cut) = collect(model.generate(Prompt::Text(prompt), &stopped).unwrap());
    assert_eq!(cut, text[..text.find(&stop).unwrap()]);
}

#[test]
fn missing_tokenizer_and_bad_sampling_are_clear_errors() {
    let dir = fixture_dir("gqa1-tied-f32");
    let mut model = Model::load(&dir, &ModelOptions::default()).unwrap();
    let params = GenerateParams::default();
    assert!(matches!(model.generate(Prompt::Text("hi"), &params), Err(Error::NoTokenizer(_))));
    assert!(matches!(model.chat(&[ChatMessage::new("user", "hi")], None, &params), Err(Error::NoTokenizer(_))));
    let bad = GenerateParams { sampling: Some(SamplingParams { top_p: 0.0, ..Default::default() }), ..params };
    let err = model.generate(Prompt::Ids(&[1]), &bad).err().unwrap();
    assert!(err.to_string().contains("top_p"), "{err}");
    assert!(matches!(Model::load(&dir.join("nope"), &ModelOptions::default()), Err(Error::Model(_))));
}

#[test]
fn generate_batch_gives_each_request_its_generate_output() {
    let tmp = model_dir_with_tokenizer();
    // A KV budget of 6 blocks of 16 tokens (gqa1: 1,024 bytes of f32 KV per token) cannot hold
    // all four requests at once.
    let batch = smelt::BatchOptions { kv_budget_bytes: 6 * 16 * 1024, max_batch: 3, ..Default::default() };
    let options = ModelOptions { batch: Some(batch), ..ModelOptions::default() };
    let mut model = Model::load(tmp.path(), &options).unwrap();
    let sampled = SamplingParams { temperature: 0.8, top_p: 0.9, seed: 3, ..Default::default() };
    let params = |n, sampling: &SamplingParams| GenerateParams {
        max_new_tokens: n,
        sampling: Some(sampling.clone()),
        ..GenerateParams::default()
    };
    let greedy = SamplingParams::default();
    let long: Vec<u32> = (0..30).map(|i| i * 11 % 384).collect();
    let requests = [
        (Prompt::Ids(&long), params(20, &greedy)),
        (Prompt::Text("x!y!z"), params(12, &sampled)),
        (Prompt::Ids(&long[..20]), params(25, &sampled)),
        (Prompt::Ids(&[5, 17, 42, 7]), params(30, &greedy)),
    ];
    let mut streamed = vec![Vec::new(); requests.len()];
    let (out, stats) = model
        .generate_batch(&requests, |e| {
            if let smelt::BatchEvent::Token { request, token, .. } = e {
                streamed[request].push(token);
            }
        })
        .unwrap();
    assert!(stats.scheduler.preemptions > 0, "{:?}", stats.scheduler);
    for (i, (prompt, params)) in requests.iter().enumerate() {
        let (ids, text) = collect(model.generate(*prompt, params).unwrap());
        assert_eq!(out[i].ids, ids, "request {i}");
        assert_eq!(streamed[i], ids, "request {i}: the events carry the same tokens");
        assert_eq!(out[i].text, text, "request {i}");
    }
}

#[test]
fn logits_are_the_cpu_models_and_each_call_is_a_new_sequence() {
    let dir = fixture_dir("gqa1-tied-f32");
    let mut model = Model::load(&dir, &ModelOptions::default()).unwrap();
    let ids = [5, 17, 42, 7];
    let first = model.logits(&ids).unwrap();
    let mut cpu = Qwen3Cpu::load_with(&dir, LoadOptions::new(smelt::ir::DType::F32)).unwrap();
    let want = cpu.forward(&ids, smelt::models::qwen3::Logits::AllPositions).unwrap();
    assert_eq!(first.shape(), [4, 384]);
    // Bit-identical: the same graphs on the same evaluator.
    assert_eq!(first.f32s().unwrap(), want.f32s().unwrap());
    assert_eq!(model.logits(&ids).unwrap().f32s().unwrap(), want.f32s().unwrap(), "the second call restarts");
}

/// A copy of the fixture whose weights are garbage: whatever is refused before the weights are
/// read is refused without an error about them.
fn garbage_weights() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_dir("gqa1-tied-f32").join("config.json"), tmp.path().join("config.json")).unwrap();
    std::fs::write(tmp.path().join("model.safetensors"), b"garbage").unwrap();
    tmp
}

#[test]
fn options_are_refused_before_the_weights_are_read() {
    use smelt::{CudaOptions, Device, Needs};
    let tmp = garbage_weights();
    let load = |options: ModelOptions| Model::load(tmp.path(), &options).err().unwrap();
    let bad_request = |e: &Error| matches!(e, Error::Model(smelt::models::ModelError::BadRequest(_)));
    let cuda_on_cpu = ModelOptions { cuda: CudaOptions { no_pdl: true, ..Default::default() }, ..Default::default() };
    let err = load(cuda_on_cpu);
    assert!(bad_request(&err) && err.to_string().contains("device cuda"), "{err}");
    // Refused before the GPU is probed: this holds on machines without one.
    let err = load(ModelOptions { device: Device::Cuda, no_fuse: true, ..Default::default() });
    assert!(bad_request(&err) && err.to_string().contains("fused"), "{err}");
    let err = load(ModelOptions { needs: Needs::Tokenizer, ..Default::default() });
    assert!(matches!(err, Error::NoTokenizer(_)), "{err}");
    // A tokenizer.json without tokenizer_config.json: no chat template.
    std::fs::copy(common::tokenizer_path(), tmp.path().join("tokenizer.json")).unwrap();
    let err = load(ModelOptions { needs: Needs::ChatTemplate, ..Default::default() });
    assert!(matches!(err, Error::NoChatTemplate(_)), "{err}");
    // What it needs is there: now the weights are read, and they are garbage.
    let err = load(ModelOptions { needs: Needs::Tokenizer, ..Default::default() });
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn a_tokenizer_file_stands_in_for_the_directorys() {
    let dir = fixture_dir("gqa1-tied-f32");
    let options = ModelOptions { tokenizer: Some(common::tokenizer_path()), ..ModelOptions::default() };
    let mut model = Model::load(&dir, &options).unwrap();
    let params = GenerateParams { max_new_tokens: 4, ..GenerateParams::default() };
    let (ids, text) = collect(model.generate(Prompt::Text("x!y!z"), &params).unwrap());
    assert_eq!(text, model.tokenizer().unwrap().decode(&ids, false).unwrap());
    let (want, _) = collect(model.generate(Prompt::Ids(&[87, 0, 88, 0, 89]), &params).unwrap());
    assert_eq!(ids, want, "the text encodes to these ids");
}

#[test]
fn hide_eos_text_drops_only_the_eos_tokens_text() {
    let tmp = model_dir_with_tokenizer();
    let mut model = Model::load(tmp.path(), &ModelOptions::default()).unwrap();
    let prompt = [5, 17, 42, 7];
    let one = GenerateParams { max_new_tokens: 1, ..GenerateParams::default() };
    let (first, _) = collect(model.generate(Prompt::Ids(&prompt), &one).unwrap());
    // Make the first greedy token the model's EOS.
    std::fs::write(tmp.path().join("generation_config.json"), format!("{{\"eos_token_id\": {}}}", first[0])).unwrap();
    let mut model = Model::load(tmp.path(), &ModelOptions::default()).unwrap();
    let eos_text = model.tokenizer().unwrap().decode(&first, false).unwrap();
    assert!(!eos_text.is_empty(), "token {} shows no text: pick another prompt", first[0]);
    for (hide, want) in [(false, eos_text.as_str()), (true, "")] {
        let params = GenerateParams { max_new_tokens: 8, hide_eos_text: hide, ..GenerateParams::default() };
        let mut generation = model.generate(Prompt::Ids(&prompt), &params).unwrap();
        let chunks: Vec<smelt::Chunk> = generation.by_ref().collect::<Result<_, _>>().unwrap();
        assert_eq!(chunks, [smelt::Chunk { token: first[0], text: want.to_string() }], "hide_eos_text: {hide}");
        assert_eq!(generation.finish_reason(), Some(smelt::FinishReason::Eos));
        assert_eq!(generation.prompt_tokens(), prompt.len());
    }
}

/// `GenerateParams::default()` samples as the model's generation_config.json says (when it
/// sets `do_sample`), exactly as the same sampling given explicitly; without the file, greedy.
#[test]
fn default_sampling_comes_from_generation_config() {
    let name = "gqa1-tied-f32";
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let gen = r#"{"eos_token_id": 383, "do_sample": true, "temperature": 1.3, "top_k": 30}"#;
    std::fs::write(dir.path().join("generation_config.json"), gen).unwrap();
    let mut model = Model::load(dir.path(), &ModelOptions::default()).unwrap();
    let want = SamplingParams { temperature: 1.3, top_k: 30, ..SamplingParams::default() };
    assert_eq!(model.sampling_defaults(), Some(&want));
    let params = GenerateParams { max_new_tokens: 12, ..GenerateParams::default() };
    let by_default = collect(model.generate(Prompt::Ids(&[5, 17]), &params).unwrap()).0;
    let explicit = GenerateParams { sampling: Some(want), ..params.clone() };
    assert_eq!(by_default, collect(model.generate(Prompt::Ids(&[5, 17]), &explicit).unwrap()).0);
    let greedy = GenerateParams { sampling: Some(SamplingParams::default()), ..params.clone() };
    let greedy_ids = collect(model.generate(Prompt::Ids(&[5, 17]), &greedy).unwrap()).0;
    assert_ne!(by_default, greedy_ids, "temperature 1.3 over 384 tokens: 12 ids that all match greedy are unlikely");
    let mut plain = Model::load(&fixture_dir(name), &ModelOptions::default()).unwrap();
    assert_eq!(plain.sampling_defaults(), None);
    assert_eq!(collect(plain.generate(Prompt::Ids(&[5, 17]), &params).unwrap()).0, greedy_ids);
}
