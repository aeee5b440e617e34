//! Stop strings: watching generated text for any of them, even when one spans several tokens,
//! and never showing a piece of one.

use crate::tokenizer::{IncrementalDecoder, Tokenizer, TokenizerError};

/// Stop strings must not be empty: an empty one would stop before the first token, which is
/// never what was meant.
pub fn check_stops(stops: &[String]) -> Result<(), String> {
    if stops.iter().any(String::is_empty) {
        return Err("a stop string is empty (it would stop before the first token)".into());
    }
    Ok(())
}

/// Watches streamed text for stop strings. Text that could still turn out to be the start of a
/// stop string is held back until the next piece decides it.
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty strings are ignored (they would stop before the first token).
    pub fn new(stops: &[String]) -> StopMatcher {
        let stops = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        StopMatcher { stops, pending: String::new(), stopped: false }
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds the next piece of text; returns what can be shown now. Once a stop string is seen,
    /// the text before it is returned, [`StopMatcher::stopped`] turns true, and the rest (the stop
    /// string included) is dropped.
    pub fn push(&mut self, text: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.pending.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            self.stopped = true;
            let shown = self.pending[..at].to_string();
            self.pending.clear();
            return shown;
        }
        // Hold back the longest tail that is the start of some stop string.
        let hold = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.pending[i..])))
            .unwrap_or(self.pending.len());
        let shown = self.pending[..hold].to_string();
        self.pending.drain(..hold);
        shown
    }

    /// What is still held back when generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Generated ids to shown text: the incremental detokenizer (when there is a tokenizer) feeding
/// a [`StopMatcher`].
pub struct TextStream<'t> {
    decoder: Option<IncrementalDecoder<'t>>,
    stops: StopMatcher,
}

impl<'t> TextStream<'t> {
    pub fn new(tokenizer: Option<&'t Tokenizer>, stops: &[String]) -> TextStream<'t> {
        TextStream { decoder: tokenizer.map(|t| t.decode_stream(false)), stops: StopMatcher::new(stops) }
    }

    /// The text `token` completes that can be shown now (empty without a tokenizer).
    pub fn push(&mut self, token: u32) -> Result<String, TokenizerError> {
        let piece = match self.decoder.as_mut() {
            Some(d) => d.step(token)?.unwrap_or_default(),
            None => String::new(),
        };
        Ok(self.stops.push(&piece))
    }

    /// Whether a stop string was seen.
    pub fn stopped(&self) -> bool {
        self.stops.stopped()
    }

    /// Ends the stream: the text the detokenizer and the stop matcher still hold.
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        let mut text = String::new();
        if let Some(d) = self.decoder.take() {
            text = self.stops.push(&d.finish()?.unwrap_or_default());
        }
        text.push_str(&self.stops.finish());
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::{check_stops, StopMatcher, TextStream};
    use crate::tokenizer::Tokenizer;

    #[test]
    fn an_empty_stop_string_is_refused() {
        assert!(check_stops(&["\n\n".into(), "User:".into()]).is_ok());
        let e = check_stops(&["x".into(), String::new()]).unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }

    /// The real Qwen3 tokenizer's ids of `text`, streamed through a [`TextStream`]: (the text
    /// shown token by token, whether it stopped, what `finish` returned).
    fn stream(text: &str, stops: &[&str]) -> (String, bool, String) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/qwen3/tokenizer.json");
        let tokenizer = Tokenizer::from_file(&path).unwrap();
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = TextStream::new(Some(&tokenizer), &stops);
        let mut shown = String::new();
        for id in tokenizer.encode(text).unwrap() {
            shown.push_str(&s.push(id).unwrap());
        }
        let stopped = s.stopped();
        (shown, stopped, s.finish().unwrap())
    }

    #[test]
    fn a_text_stream_shows_the_text_up_to_a_stop_and_finish_returns_what_it_held() {
        let text = "Héllo wörld. Stop here, please.";
        assert_eq!(stream(text, &[]), (text.to_string(), false, String::new()));
        assert_eq!(stream(text, &["Stop"]), ("Héllo wörld. ".to_string(), true, String::new()));
        // A last "please" could still have become "please!": held back, then given by finish.
        assert_eq!(stream("Stop here, please", &["please!"]), ("Stop here, ".to_string(), false, "please".to_string()));
        // Without a tokenizer there is no text.
        let mut bare = TextStream::new(None, &[]);
        assert_eq!(
            (bare.push(9707).unwrap(), bare.stopped(), bare.finish().unwrap()),
            (String::new(), false, String::new())
        );
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let shown: Vec<String> = pieces.iter().map(|p| m.push(p)).collect();
        let stopped = m.stopped();
        (shown, stopped, m.finish())
    }

    #[test]
    fn a_stop_string_across_tokens_stops_and_is_not_shown() {
        let (shown, stopped, rest) = run(&["o wor"], &["Hel", "lo w", "orld!", "more"]);
        assert_eq!(shown, ["Hel", "l", "", ""]);
        assert!(stopped);
        assert_eq!(rest, "");
    }

    #[test]
    fn held_text_that_is_not_a_stop_is_shown_later() {
        let (shown, stopped, rest) = run(&["cd"], &["ab", "c", "e", "c"]);
        assert_eq!(shown, ["ab", "", "ce", ""]);
        assert!(!stopped);
        assert_eq!(rest, "c");
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_unicode_is_split_on_chars() {
        let (shown, stopped, _) = run(&["éé", "\n\n", "zz"], &["naïve", " é", "xé\n\nzz"]);
        assert_eq!(shown.concat(), "naïve éxé");
        assert!(stopped);
        let (shown, stopped, rest) = run(&[""], &["a", "b"]);
        assert_eq!((shown.concat(), stopped, rest), ("ab".to_string(), false, String::new()));
    }
}
