//! The HTML pages people see: small, accessible, one inline stylesheet, no scripts, no external
//! assets. Written as maud templates, checked at compile time, every dynamic value escaped by the
//! template itself.

use maud::DOCTYPE;
pub use maud::{html, Markup, PreEscaped};

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f6f8;color:#1b1f23}\
main{max-width:36rem;margin:4rem auto;padding:2rem;background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002}\
h1{font-size:1.4rem;margin-top:0}.button{display:inline-block;padding:.6rem 1.2rem;background:#005eb8;color:#fff;\
border-radius:4px;text-decoration:none;font-weight:600}.button:focus{outline:3px solid #ffb81c}\
button.button{border:0;font-size:1rem;cursor:pointer}code{background:#eef;padding:0 .2rem}.muted{color:#555;font-size:.9rem}";

/// A whole page: its title, stylesheet, a banner across the top (none for pkb-edge's own pages)
/// and what goes in `<main>`. The simulators and the demo dress their pages with it too.
pub fn document(title: &str, style: &str, banner: Option<Markup>, main: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                title { (title) }
                style { (PreEscaped(style)) }
            }
            body {
                @if let Some(banner) = banner {
                    header { (banner) }
                }
                main { (main) }
            }
        }
    }
    .into_string()
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
        let main = html! {
            h1 { (self.title) }
            @for p in &self.paragraphs {
                p { (p) }
            }
            @if let Some((label, href)) = &self.action {
                p { a class="button" href=(href) { (label) } }
            }
            @if let Some((label, action)) = &self.form {
                form method="post" action=(action) {
                    button class="button" type="submit" { (label) }
                }
            }
            @if let Some(note) = &self.footnote {
                p class="muted" { (note) }
            }
        };
        document(
            &format!("{} – Patients Know Best", self.title),
            STYLE,
            None,
            main,
        )
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
