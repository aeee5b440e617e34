//! One sequence's generation after its prompt, the same for single and batched generation on
//! every backend: which token comes next (the sampler), the text it shows (the detokenizer and
//! the stop strings), and when and why the sequence ends (a stop string, an EOS id, its
//! length, a full context).

use crate::sample::{Sampler, SamplingParams};
use crate::stop::TextStream;
use crate::tokenizer::Tokenizer;

/// A prompt and what to generate after it.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends at the first of these in the text (which is not shown).
    pub stop: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An EOS id (the last id of the output).
    Eos,
    /// A stop string appeared in the text.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
    /// The sequence filled the model's context.
    ContextFull,
}

impl FinishReason {
    /// The name the batch output and the run statistics use (as serialized): `eos`, `stop`,
    /// `length`, `context_full`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContextFull => "context_full",
        }
    }
}

/// A finished sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub ids: Vec<u32>,
    /// The shown text (empty without a tokenizer).
    pub text: String,
    pub finish: FinishReason,
    /// Why some ids are missing from `text` (an id the tokenizer cannot decode, which a
    /// model's padded vocabulary allows); the ids are the result either way.
    pub warning: Option<String>,
}

/// What one token did to its sequence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    /// The text it completes that can be shown now (possibly empty: a character may span
    /// tokens, and text that may begin a stop string is held back).
    pub text: String,
    /// Set when it ended the sequence: why, and the text held back until then (already
    /// flushed: nothing follows).
    pub end: Option<(FinishReason, String)>,
}

/// A sequence being generated: feed it each chosen token with [`Continuation::accept`] until
/// a [`Step`] says it ended.
pub struct Continuation<'t> {
    sampler: Sampler,
    text: TextStream<'t>,
    ids: Vec<u32>,
    shown: String,
    warning: Option<String>,
    max_new_tokens: usize,
    eos_text: bool,
    finish: Option<FinishReason>,
}

impl<'t> Continuation<'t> {
    /// The generation `request` asks for (its sampler seeded with the prompt, for penalties);
    /// text needs `tokenizer`. A request for no tokens has ended already.
    pub fn new(request: &Request, tokenizer: Option<&'t Tokenizer>) -> Continuation<'t> {
        Continuation {
            sampler: Sampler::new(request.sampling.clone(), &request.prompt),
            text: TextStream::new(tokenizer, &request.stop),
            ids: Vec::new(),
            shown: String::new(),
            warning: None,
            max_new_tokens: request.max_new_tokens,
            eos_text: true,
            finish: (request.max_new_tokens == 0).then_some(FinishReason::Length),
        }
    }

    /// The EOS id that ends the sequence shows no text (a chat reply ends without its
    /// `<|im_end|>`); by default it shows its token's text, as the tokenizer decodes it.
    pub fn without_eos_text(mut self) -> Continuation<'t> {
        self.eos_text = false;
        self
    }

    /// Whether the next token is the plain argmax (greedy, no penalties), which a backend may
    /// compute without returning the logits.
    pub fn greedy(&self) -> bool {
        self.sampler.params().is_plain_greedy()
    }

    /// Chooses the next token from the last position's logits.
    pub fn choose(&mut self, logits: &[f32]) -> u32 {
        self.sampler.sample(logits)
    }

    /// Takes the chosen `token`. `computed` is how many tokens of the sequence (prompt
    /// included) the model has computed, `context` how many it can: when they meet, `token`
    /// is the last. `eos` are the ids that end generation.
    pub fn accept(&mut self, token: u32, eos: &[u32], computed: usize, context: usize) -> Step {
        debug_assert!(self.finish.is_none(), "a token after the end");
        self.sampler.observe(token);
        self.ids.push(token);
        let is_eos = eos.contains(&token);
        let text = if is_eos && !self.eos_text { Ok(String::new()) } else { self.text.push(token) };
        let text = self.shown_or_warn(text);
        let finish = if self.text.stopped() {
            Some(FinishReason::Stop)
        } else if is_eos {
            Some(FinishReason::Eos)
        } else if self.ids.len() >= self.max_new_tokens {
            Some(FinishReason::Length)
        } else if computed >= context {
            Some(FinishReason::ContextFull)
        } else {
            None
        };
        self.finish = finish;
        let end = finish.map(|why| {
            let tail = self.text.finish();
            (why, self.shown_or_warn(tail))
        });
        Step { text, end }
    }

    /// The ids generated so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Why the sequence ended; `None` while it goes on.
    pub fn finish(&self) -> Option<FinishReason> {
        self.finish
    }

    /// The first text that could not be shown, if any (see [`Completion::warning`]).
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// The result, once ended ([`FinishReason::Length`] if asked before).
    pub fn into_completion(self) -> Completion {
        let finish = self.finish.unwrap_or(FinishReason::Length);
        Completion { ids: self.ids, text: self.shown, finish, warning: self.warning }
    }

    /// `text` added to the shown text; an undecodable id shows nothing and is remembered.
    fn shown_or_warn(&mut self, text: Result<String, crate::tokenizer::TokenizerError>) -> String {
        let text = text.unwrap_or_else(|e| {
            self.warning.get_or_insert(e.to_string());
            String::new()
        });
        self.shown.push_str(&text);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(max_new_tokens: usize) -> Request {
        Request { prompt: vec![1, 2], max_new_tokens, ..Request::default() }
    }

    #[test]
    fn ends_at_eos_then_length_then_context_in_that_order() {
        // EOS as the length and the context run out: EOS is the reason.
        let mut c = Continuation::new(&request(3), None);
        assert_eq!(c.accept(7, &[9], 3, 100).end, None);
        assert_eq!(c.accept(8, &[9], 4, 100).end, None);
        assert_eq!(c.accept(9, &[9], 5, 5).end, Some((FinishReason::Eos, String::new())));
        assert_eq!(c.into_completion().ids, [7, 8, 9]);
        // The length and the context at once: the length.
        let mut c = Continuation::new(&request(2), None);
        c.accept(7, &[9], 3, 4);
        assert_eq!(c.accept(8, &[9], 4, 4).end.map(|e| e.0), Some(FinishReason::Length));
        let mut c = Continuation::new(&request(5), None);
        c.accept(7, &[9], 3, 4);
        assert_eq!(c.accept(8, &[9], 4, 4).end.map(|e| e.0), Some(FinishReason::ContextFull));
        assert_eq!(c.finish(), Some(FinishReason::ContextFull));
    }

    #[test]
    fn no_tokens_asked_is_ended_at_once() {
        let c = Continuation::new(&request(0), None);
        assert_eq!(c.finish(), Some(FinishReason::Length));
        assert_eq!(c.into_completion().ids, Vec::<u32>::new());
    }

    #[test]
    fn text_and_stop_strings_with_the_real_tokenizer() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/qwen3/tokenizer.json");
        let tokenizer = Tokenizer::from_file(&path).unwrap();
        let ids = tokenizer.encode("Hello there, world! Bye.").unwrap();
        let im_end = tokenizer.encode("<|im_end|>").unwrap();
        let eos = im_end[0];
        let stop = Request { stop: vec!["world".into()], max_new_tokens: 64, ..request(0) };
        let mut c = Continuation::new(&stop, Some(&tokenizer));
        let mut shown = String::new();
        for &id in &ids {
            let step = c.accept(id, &[eos], 10, 100);
            shown.push_str(&step.text);
            if let Some((why, tail)) = step.end {
                assert_eq!(why, FinishReason::Stop);
                shown.push_str(&tail);
                break;
            }
        }
        assert_eq!(shown, "Hello there, ");
        assert_eq!(c.into_completion().text, "Hello there, ");

        // An EOS shows its text unless asked not to.
        for (eos_text, want) in [(true, "Hi<|im_end|>"), (false, "Hi")] {
            let mut c = Continuation::new(&request(8), Some(&tokenizer));
            if !eos_text {
                c = c.without_eos_text();
            }
            let hi = tokenizer.encode("Hi").unwrap();
            for &id in hi.iter().chain([&eos]) {
                c.accept(id, &[eos], 5, 100);
            }
            let done = c.into_completion();
            assert_eq!((done.text.as_str(), done.finish), (want, FinishReason::Eos));
        }
    }
}
