//! Chat messages to a prompt, with the model's own chat template.
//!
//! GGUF files carry the template in `tokenizer.chat_template` as Jinja (the
//! Hugging Face convention); it is rendered with minijinja and its Python
//! compatibility layer, never by pasting strings. A model without a template
//! gets ChatML, which most small instruct models use.

use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;
use shared_model::gguf::Metadata;

/// ChatML, for models that carry no template.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + \
                      message['content'] + '<|im_end|>' + '\n' }}{% endfor %}\
                      {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// One message of a conversation, as the template sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A template that cannot be used or rendered.
#[derive(Debug, thiserror::Error)]
#[error("chat template: {0}")]
pub struct TemplateError(String);

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// Whether the template came from the model (not the ChatML fallback).
    pub from_model: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("from_model", &self.from_model)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The template in the model's metadata, or ChatML. `bos`/`eos` are the
    /// text of the model's BOS/EOS tokens (templates may print them).
    pub fn from_metadata(m: &Metadata, bos: &str, eos: &str) -> Result<Self, TemplateError> {
        match m.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            Some(source) => Self::new(source, bos, eos, true),
            None => Self::new(CHATML, bos, eos, false),
        }
    }

    /// Compiles `source`.
    pub fn new(
        source: &str,
        bos: &str,
        eos: &str,
        from_model: bool,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| TemplateError(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_owned(),
            eos: eos.to_owned(),
            from_model,
        })
    }

    /// The prompt for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[Message]) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos,
                eos_token => self.eos,
            })
            .map_err(|e| TemplateError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn chatml_renders_every_turn_and_opens_the_assistant() {
        let t = ChatTemplate::new(CHATML, "", "", false).unwrap();
        let out = t
            .render(&[msg("system", "Be brief."), msg("user", "Hi")])
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn templates_can_use_python_methods_and_raise() {
        let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}\
                      {% endif %}{{ bos_token }}{{ messages[0]['content'].strip().upper() }}";
        let t = ChatTemplate::new(source, "<s>", "</s>", true).unwrap();
        assert_eq!(t.render(&[msg("user", "  hi ")]).unwrap(), "<s>HI");
        let err = t.render(&[msg("system", "x")]).unwrap_err();
        assert!(err.to_string().contains("user first"), "{err}");
        assert!(ChatTemplate::new("{% if %}", "", "", true).is_err());
    }
}
