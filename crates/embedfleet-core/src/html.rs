//! HTML → clean text for scraped pages: the words a reader sees, with block structure kept as line
//! breaks, and without scripts, styles, navigation or page chrome that would pollute chunks.

use scraper::{ElementRef, Html, Node};

/// Elements whose whole subtree is not content.
const SKIPPED: &[&str] =
    &["script", "style", "noscript", "template", "nav", "header", "footer", "aside", "svg", "iframe", "form", "button", "select", "head"];

/// Elements that start a new line of text.
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "pre",
    "blockquote",
    "table",
    "tr",
    "br",
    "hr",
    "figure",
    "figcaption",
    "caption",
    "address",
    "details",
    "summary",
    "body",
];

pub struct HtmlText {
    pub title: Option<String>,
    pub text: String,
}

pub fn html_to_text(html: &str) -> HtmlText {
    let doc = Html::parse_document(html);
    let title = doc
        .select(&scraper::Selector::parse("title").expect("static selector"))
        .next()
        .map(|t| collapse_spaces(&t.text().collect::<String>()))
        .filter(|t| !t.is_empty());
    let mut out = String::new();
    walk(doc.root_element(), &mut out, false);
    HtmlText { title, text: tidy_lines(&out) }
}

fn walk(element: ElementRef<'_>, out: &mut String, in_pre: bool) {
    let name = element.value().name();
    if SKIPPED.contains(&name) || is_navigation(element) {
        return;
    }
    let block = BLOCKS.contains(&name);
    let pre = in_pre || name == "pre";
    if block {
        out.push('\n');
    }
    for child in element.children() {
        match child.value() {
            Node::Text(text) => {
                if pre {
                    out.push_str(text);
                } else {
                    // Inside running text all white space is one space; line breaks come from blocks.
                    let collapsed = collapse_spaces(text);
                    if !collapsed.is_empty() {
                        if text.starts_with(char::is_whitespace) {
                            out.push(' ');
                        }
                        out.push_str(&collapsed);
                        if text.ends_with(char::is_whitespace) {
                            out.push(' ');
                        }
                    } else if !text.is_empty() {
                        out.push(' ');
                    }
                }
            }
            Node::Element(_) => {
                if let Some(child) = ElementRef::wrap(child) {
                    walk(child, out, pre);
                }
            }
            _ => {}
        }
    }
    if block {
        out.push('\n');
    }
    if matches!(name, "td" | "th") {
        out.push('\t');
    }
}

/// `role="navigation"` and the common sidebar/breadcrumb classes of documentation generators.
fn is_navigation(element: ElementRef<'_>) -> bool {
    let value = element.value();
    if matches!(value.attr("role"), Some("navigation" | "banner" | "contentinfo" | "search")) {
        return true;
    }
    if value.attr("aria-hidden") == Some("true") {
        return true;
    }
    value.classes().any(|class| {
        matches!(
            class,
            "sidebar"
                | "sphinxsidebar"
                | "related"
                | "navheader"
                | "navfooter"
                | "breadcrumb"
                | "breadcrumbs"
                | "toc-sidebar"
                | "skip-link"
        )
    })
}

fn collapse_spaces(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Trims each line, and keeps at most one empty line between paragraphs.
fn tidy_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0;
    for line in text.lines() {
        let line = line.trim_matches(|c: char| c == ' ' || c == '\t');
        if line.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 1 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_chrome_and_keeps_blocks() {
        let html = r#"<html><head><title> The  Title </title><style>p{}</style></head><body>
            <nav><a href="/">Home</a></nav>
            <div class="sphinxsidebar">Quick search</div>
            <h1>Heading</h1><p>First   paragraph with <b>bold</b> text.</p>
            <script>var x = 1;</script>
            <ul><li>one</li><li>two</li></ul>
            <pre>fn main() {
    x();
}</pre>
            <footer>Copyright</footer></body></html>"#;
        let out = html_to_text(html);
        assert_eq!(out.title.as_deref(), Some("The Title"));
        assert_eq!(out.text, "Heading\nFirst paragraph with bold text.\n\none\ntwo\n\nfn main() {\nx();\n}");
    }
}
