//! The one way kernel source is written: a CUDA C template, kept in a `.cu` file beside its
//! emitter (`include_str!`), whose slots `$NAME` (a `$` and an upper-case identifier) the
//! emitter fills by name. A slot with no value, or a value with no slot, is an error at emit
//! time: a typo in either place cannot silently emit a kernel with a hole in it or drop a
//! fragment. Any other `$` is kept as written.

use std::collections::BTreeSet;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template {template}: slot ${slot} has no value")]
    Missing { template: &'static str, slot: String },
    #[error("template {template}: the value for {key} fills no slot")]
    Unused { template: &'static str, key: String },
    #[error("template {template}: {key} is given twice")]
    Twice { template: &'static str, key: String },
}

/// A named template; the name is the `.cu` file's, for errors.
#[derive(Clone, Copy, Debug)]
pub struct Template {
    pub name: &'static str,
    pub text: &'static str,
}

impl Template {
    pub const fn new(name: &'static str, text: &'static str) -> Template {
        Template { name, text }
    }

    /// The text with every slot replaced by its value (values are not scanned for slots).
    pub fn render(&self, values: &[(&str, &str)]) -> Result<String, TemplateError> {
        let mut keys = BTreeSet::new();
        for (key, _) in values {
            if !keys.insert(*key) {
                return Err(TemplateError::Twice { template: self.name, key: key.to_string() });
            }
        }
        let mut used = BTreeSet::new();
        let mut out = String::with_capacity(self.text.len() + values.iter().map(|(_, v)| v.len()).sum::<usize>());
        let mut rest = self.text;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let len = slot_len(after);
            if len == 0 {
                out.push('$');
                rest = after;
                continue;
            }
            let slot = &after[..len];
            match values.iter().find(|(key, _)| *key == slot) {
                Some((key, value)) => {
                    out.push_str(value);
                    used.insert(*key);
                }
                None => return Err(TemplateError::Missing { template: self.name, slot: slot.to_string() }),
            }
            rest = &after[len..];
        }
        out.push_str(rest);
        match keys.difference(&used).next() {
            Some(key) => Err(TemplateError::Unused { template: self.name, key: key.to_string() }),
            None => Ok(out),
        }
    }

    /// [`Template::render`] for an emitter whose template is fixed text: a mismatch is a bug in
    /// smelt that every test emitting the kernel finds, so it panics naming the template.
    pub fn fill(&self, values: &[(&str, &str)]) -> String {
        self.render(values).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Bytes of the slot name at the start of `s`: an upper-case letter, then upper-case letters,
/// digits and underscores (0: not a slot).
fn slot_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    if !bytes.first().is_some_and(u8::is_ascii_uppercase) {
        return 0;
    }
    bytes.iter().take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || **b == b'_').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Template = Template::new("t.cu", "a $X b $X_2 c $ d $x e $$Y");

    #[test]
    fn slots_are_whole_identifiers_filled_once_each() {
        let out = T.render(&[("X", "1"), ("X_2", "$X"), ("Y", "3")]).unwrap();
        // `$X_2` is its own slot (not `$X` then `_2`); a value is not scanned; a lone `$` or
        // a `$` before lower case stays.
        assert_eq!(out, "a 1 b $X c $ d $x e $3");
    }

    #[test]
    fn a_missing_an_unused_or_a_repeated_value_is_an_error() {
        let missing = T.render(&[("X", "1"), ("Y", "3")]).unwrap_err();
        assert_eq!(missing, TemplateError::Missing { template: "t.cu", slot: "X_2".into() });
        let unused = T.render(&[("X", "1"), ("X_2", "2"), ("Y", "3"), ("Z", "4")]).unwrap_err();
        assert_eq!(unused, TemplateError::Unused { template: "t.cu", key: "Z".into() });
        let twice = T.render(&[("X", "1"), ("X", "2")]).unwrap_err();
        assert_eq!(twice, TemplateError::Twice { template: "t.cu", key: "X".into() });
        assert_eq!(missing.to_string(), "template t.cu: slot $X_2 has no value");
    }
}
