//! `generation_config.json`: the EOS ids that end generation, and the sampling the model's
//! authors recommend (Qwen3: `do_sample`, temperature 0.6, top_k 20, top_p 0.95; its model
//! card warns against greedy decoding with thinking). Read as transformers reads it.

use std::path::{Path, PathBuf};

use crate::config::{check_eos_in_vocab, token_ids};
use crate::engine::ModelError;
use crate::sample::SamplingParams;

/// What a model directory's `generation_config.json` says; all None without the file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationConfig {
    /// `eos_token_id` (one id or a list), each below the vocabulary.
    pub eos_token_ids: Option<Vec<u32>>,
    /// The sampling when `do_sample` is true: `temperature`, `top_k`, `top_p`, `min_p` and
    /// `repetition_penalty`, transformers' defaults where absent (1.0, 50, 1.0, none, 1.0).
    /// None: greedy, as transformers decodes without `do_sample`.
    pub sampling: Option<SamplingParams>,
    /// The file it came from.
    pub path: Option<PathBuf>,
}

impl GenerationConfig {
    /// Reads `dir/generation_config.json` if it exists; an error names the file and the field.
    pub fn load(dir: &Path, vocab: usize) -> Result<GenerationConfig, ModelError> {
        let path = dir.join("generation_config.json");
        if !smelt_runtime::files::exists(&path) {
            return Ok(GenerationConfig::default());
        }
        let bad = |message: String| ModelError::GenerationConfig { path: path.clone(), message };
        let text = smelt_runtime::files::read_metadata(&path).map_err(|e| bad(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let fields = v.as_object().ok_or_else(|| bad("expected a JSON object".into()))?;
        let eos_token_ids = match fields.get("eos_token_id") {
            None | Some(serde_json::Value::Null) => None,
            Some(ids) => {
                let ids = token_ids(Some(ids)).map_err(|m| bad(format!("eos_token_id: {m}")))?;
                check_eos_in_vocab(&ids, vocab).map_err(|m| bad(format!("eos_token_id: {m}")))?;
                Some(ids)
            }
        };
        let do_sample = match fields.get("do_sample") {
            None | Some(serde_json::Value::Null) => false,
            Some(v) => v.as_bool().ok_or_else(|| bad(format!("do_sample: {v} is not true or false")))?,
        };
        let sampling = if do_sample { Some(sampling(fields).map_err(bad)?) } else { None };
        Ok(GenerationConfig { eos_token_ids, sampling, path: Some(path) })
    }
}

/// The sampling fields, checked as `SamplingParams::validate` checks flags.
fn sampling(fields: &serde_json::Map<String, serde_json::Value>) -> Result<SamplingParams, String> {
    let number = |name: &str, default: f32| -> Result<f32, String> {
        match fields.get(name) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => v.as_f64().map(|x| x as f32).ok_or_else(|| format!("{name}: {v} is not a number")),
        }
    };
    let top_k = match fields.get("top_k") {
        None => 50,
        Some(serde_json::Value::Null) => 0,
        Some(v) => {
            v.as_u64().and_then(|k| usize::try_from(k).ok()).ok_or_else(|| format!("top_k: {v} is not a count"))?
        }
    };
    let params = SamplingParams {
        temperature: number("temperature", 1.0)?,
        top_k,
        top_p: number("top_p", 1.0)?,
        min_p: number("min_p", 0.0)?,
        repetition_penalty: number("repetition_penalty", 1.0)?,
        ..SamplingParams::default()
    };
    params.validate()?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<GenerationConfig, ModelError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("generation_config.json"), json).unwrap();
        GenerationConfig::load(dir.path(), 1000)
    }

    #[test]
    fn qwen3s_sampling_is_read_with_transformers_defaults_for_the_rest() {
        let qwen3 = include_str!("../assets/qwen3/configs/qwen3-0.6b.generation_config.json");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("generation_config.json"), qwen3).unwrap();
        let g = GenerationConfig::load(dir.path(), 151936).unwrap();
        assert_eq!(g.eos_token_ids, Some(vec![151645, 151643]));
        let want = SamplingParams { temperature: 0.6, top_k: 20, top_p: 0.95, ..SamplingParams::default() };
        assert_eq!(g.sampling, Some(want));
        // do_sample alone: transformers' defaults (top_k 50).
        let s = load(r#"{"do_sample": true}"#).unwrap().sampling.unwrap();
        assert_eq!((s.temperature, s.top_k, s.top_p, s.min_p), (1.0, 50, 1.0, 0.0));
        // Without do_sample a temperature changes nothing: greedy.
        assert_eq!(load(r#"{"temperature": 0.7, "eos_token_id": 3}"#).unwrap().sampling, None);
        assert_eq!(
            GenerationConfig::load(tempfile::tempdir().unwrap().path(), 10).unwrap(),
            GenerationConfig::default()
        );
    }

    #[test]
    fn bad_fields_are_named_with_the_file() {
        for (json, field) in [
            (r#"{"do_sample": "yes"}"#, "do_sample"),
            (r#"{"do_sample": true, "top_p": 0}"#, "top_p"),
            (r#"{"do_sample": true, "temperature": -1}"#, "temperature"),
            (r#"{"do_sample": true, "top_k": 2.5}"#, "top_k"),
            (r#"{"eos_token_id": 5000}"#, "eos_token_id"),
            ("[1]", "JSON object"),
        ] {
            let e = load(json).unwrap_err().to_string();
            assert!(e.contains("generation_config.json") && e.contains(field), "{json}: {e}");
        }
    }
}
