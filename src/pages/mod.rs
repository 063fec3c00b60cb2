//! The HTML pages people see: small, accessible, one inline stylesheet, no scripts, no external
//! assets. Every dynamic value goes through `escape`.

use std::fmt::Write;

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f6f8;color:#1b1f23}\
main{max-width:36rem;margin:4rem auto;padding:2rem;background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002}\
h1{font-size:1.4rem;margin-top:0}.button{display:inline-block;padding:.6rem 1.2rem;background:#005eb8;color:#fff;\
border-radius:4px;text-decoration:none;font-weight:600}.button:focus{outline:3px solid #ffb81c}\
button.button{border:0;font-size:1rem;cursor:pointer}code{background:#eef;padding:0 .2rem}.muted{color:#555;font-size:.9rem}";

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A message page: a heading, paragraphs of text, and at most one action link.
pub struct MessagePage<'a> {
    pub title: &'a str,
    pub paragraphs: Vec<String>,
    pub action: Option<(&'a str, String)>,
    /// A button that POSTs to an address (label, action): for state-changing requests.
    pub form: Option<(&'a str, String)>,
    pub footnote: Option<String>,
}

impl MessagePage<'_> {
    pub fn render(&self) -> String {
        let mut html = String::with_capacity(1024);
        let _ = write!(
            html,
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
             <title>{title} – Patients Know Best</title><style>{STYLE}</style></head>\
             <body><main><h1>{title}</h1>",
            title = escape(self.title)
        );
        for p in &self.paragraphs {
            let _ = write!(html, "<p>{}</p>", escape(p));
        }
        if let Some((label, href)) = &self.action {
            let _ = write!(
                html,
                "<p><a class=\"button\" href=\"{}\">{}</a></p>",
                escape(href),
                escape(label)
            );
        }
        if let Some((label, action)) = &self.form {
            let _ = write!(
                html,
                "<form method=\"post\" action=\"{}\"><button class=\"button\" type=\"submit\">{}</button></form>",
                escape(action),
                escape(label)
            );
        }
        if let Some(note) = &self.footnote {
            let _ = write!(html, "<p class=\"muted\">{}</p>", escape(note));
        }
        html.push_str("</main></body></html>");
        html
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_values_are_escaped() {
        let html = MessagePage {
            title: "<t>",
            paragraphs: vec!["a <script>alert(1)</script> & \"b\"".into()],
            action: Some(("go", "/x?a=1&b=\"><script>".into())),
            form: Some(("<b>", "/y\"".into())),
            footnote: None,
        }
        .render();
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("href=\"/x?a=1&amp;b=&quot;&gt;&lt;script&gt;\""));
        assert!(html.contains("action=\"/y&quot;\""));
        assert!(!html.contains("<b>"));
    }
}
