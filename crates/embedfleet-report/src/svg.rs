//! A small SVG writer that knows how wide its text is. Charts lay labels out with
//! [`text_width`], so they can keep them apart, and tests can check from the written file that
//! no two labels overlap ([`TextBox::from_attributes`]).

use std::fmt::Write as _;

/// Liberation Sans is metric-compatible with Arial and Helvetica, so the widths below hold for
/// all three; Debian's chromium pulls it in, macOS and Windows have Arial.
pub const FONT_FAMILY: &str = "'Liberation Sans', Arial, Helvetica, sans-serif";

/// Advance widths of ASCII 32..=126 in Arial/Helvetica, in thousandths of the font size.
const ASCII_WIDTHS: [u16; 95] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, // space ../
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, // 0-9
    278, 278, 584, 584, 584, 556, 1015, // : ; < = > ? @
    667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667,
    611, // A-Z
    278, 278, 278, 469, 556, 333, // [ \ ] ^ _ `
    556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500,
    500, // a-z
    334, 260, 334, 584, // { | } ~
];

/// Ascent and descent of the font, in font sizes: a label's box spans this much around its baseline.
pub const ASCENT: f64 = 0.905;
pub const DESCENT: f64 = 0.212;

/// The width of `text` at `size` pixels. Bold is about 7% wider; characters outside ASCII are
/// counted as wide ones, so an estimate errs on the side of more room.
pub fn text_width(text: &str, size: f64, bold: bool) -> f64 {
    let units: u32 = text
        .chars()
        .map(|c| match c as u32 {
            32..=126 => ASCII_WIDTHS[(c as u32 - 32) as usize] as u32,
            0x2026 => 1000, // …
            _ if c.is_ascii() => 0,
            _ => 1000,
        })
        .sum();
    units as f64 / 1000.0 * size * if bold { 1.07 } else { 1.0 }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

impl Anchor {
    fn name(self) -> &'static str {
        match self {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "middle" => Anchor::Middle,
            "end" => Anchor::End,
            _ => Anchor::Start,
        }
    }
}

/// The box a label covers.
#[derive(Debug, Clone, PartialEq)]
pub struct TextBox {
    pub text: String,
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
}

impl TextBox {
    pub fn new(x: f64, y: f64, size: f64, anchor: Anchor, bold: bool, text: &str) -> Self {
        let w = text_width(text, size, bold);
        let x0 = match anchor {
            Anchor::Start => x,
            Anchor::Middle => x - w / 2.0,
            Anchor::End => x - w,
        };
        TextBox { text: text.to_owned(), x0, y0: y - ASCENT * size, x1: x0 + w, y1: y + DESCENT * size }
    }

    /// The box of a `<text>` element from its attributes as this module writes them.
    pub fn from_attributes(x: f64, y: f64, size: f64, anchor: &str, weight: Option<&str>, text: &str) -> Self {
        Self::new(x, y, size, Anchor::parse(anchor), weight == Some("bold"), text)
    }

    pub fn overlaps(&self, other: &TextBox) -> bool {
        self.x0 < other.x1 && other.x0 < self.x1 && self.y0 < other.y1 && other.y0 < self.y1
    }
}

/// An SVG document under construction.
pub struct Svg {
    width: f64,
    height: f64,
    body: String,
    labels: Vec<TextBox>,
}

/// Text options beyond position and size.
#[derive(Debug, Clone, Copy)]
pub struct TextStyle<'a> {
    pub size: f64,
    pub anchor: Anchor,
    pub bold: bool,
    pub fill: &'a str,
    /// A white outline under the glyphs, so a grid line behind the label does not cross it.
    pub halo: bool,
}

impl Default for TextStyle<'_> {
    fn default() -> Self {
        TextStyle { size: 12.0, anchor: Anchor::Start, bold: false, fill: "#1f2328", halo: false }
    }
}

fn num(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_owned() }
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl Svg {
    pub fn new(width: f64, height: f64) -> Self {
        Svg { width, height, body: String::new(), labels: Vec::new() }
    }

    pub fn width(&self) -> f64 {
        self.width
    }

    pub fn height(&self) -> f64 {
        self.height
    }

    /// Grows the canvas (charts whose height depends on their content set it last).
    pub fn set_height(&mut self, height: f64) {
        self.height = height;
    }

    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str, title: Option<&str>) {
        let _ = write!(
            self.body,
            r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{fill}""#,
            num(x),
            num(y),
            num(w.max(0.0)),
            num(h.max(0.0))
        );
        match title {
            Some(t) => {
                let _ = write!(self.body, "><title>{}</title></rect>", escape(t));
            }
            None => self.body.push_str("/>"),
        }
    }

    /// A line from `(x1, y1)` to `(x2, y2)`.
    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, width: f64, dash: Option<&str>) {
        let _ = write!(
            self.body,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{stroke}" stroke-width="{}"{}/>"#,
            num(x1),
            num(y1),
            num(x2),
            num(y2),
            num(width),
            dash.map(|d| format!(r#" stroke-dasharray="{d}""#)).unwrap_or_default()
        );
    }

    pub fn polyline(&mut self, points: &[(f64, f64)], stroke: &str, width: f64, opacity: f64) {
        if points.is_empty() {
            return;
        }
        let pts: Vec<String> = points.iter().map(|(x, y)| format!("{},{}", num(*x), num(*y))).collect();
        let _ = write!(
            self.body,
            r#"<polyline points="{}" fill="none" stroke="{stroke}" stroke-width="{}" stroke-opacity="{}" stroke-linejoin="round"/>"#,
            pts.join(" "),
            num(width),
            num(opacity)
        );
    }

    pub fn circle(&mut self, cx: f64, cy: f64, r: f64, fill: &str, stroke: Option<(&str, f64)>, title: Option<&str>) {
        let _ = write!(self.body, r#"<circle cx="{}" cy="{}" r="{}" fill="{fill}""#, num(cx), num(cy), num(r));
        if let Some((color, width)) = stroke {
            let _ = write!(self.body, r#" stroke="{color}" stroke-width="{}""#, num(width));
        }
        match title {
            Some(t) => {
                let _ = write!(self.body, "><title>{}</title></circle>", escape(t));
            }
            None => self.body.push_str("/>"),
        }
    }

    /// A label at baseline `y`; returns the box it covers.
    pub fn text(&mut self, x: f64, y: f64, text: &str, style: TextStyle) -> TextBox {
        let b = TextBox::new(x, y, style.size, style.anchor, style.bold, text);
        let _ = write!(
            self.body,
            r#"<text x="{}" y="{}" font-size="{}" text-anchor="{}" fill="{}"{}{}>{}</text>"#,
            num(x),
            num(y),
            num(style.size),
            style.anchor.name(),
            style.fill,
            if style.bold { r#" font-weight="bold""# } else { "" },
            if style.halo { r#" stroke="white" stroke-width="3" paint-order="stroke""# } else { "" },
            escape(text)
        );
        self.labels.push(b.clone());
        b
    }

    /// The boxes of every label written so far.
    pub fn labels(&self) -> &[TextBox] {
        &self.labels
    }

    /// The document. `title` is what a screen reader (and a hover) says the chart is.
    pub fn finish(self, title: &str) -> String {
        format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-family="{FONT_FAMILY}" role="img" aria-label="{t}"><title>{t}</title><rect width="{w}" height="{h}" fill="white"/>{body}</svg>"#,
            w = num(self.width),
            h = num(self.height),
            t = escape(title),
            body = self.body
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_follow_the_font() {
        // "Ab1" = 667 + 556 + 556 thousandths.
        assert!((text_width("Ab1", 10.0, false) - 17.79).abs() < 1e-9);
        assert!(text_width("W", 12.0, false) > text_width("i", 12.0, false) * 4.0);
        assert!(text_width("é", 10.0, false) >= 10.0, "non-ASCII errs wide");
    }

    #[test]
    fn boxes_follow_the_anchor() {
        let start = TextBox::new(100.0, 50.0, 10.0, Anchor::Start, false, "00");
        let end = TextBox::new(100.0, 50.0, 10.0, Anchor::End, false, "00");
        let mid = TextBox::new(100.0, 50.0, 10.0, Anchor::Middle, false, "00");
        assert_eq!(start.x0, 100.0);
        assert!((end.x1 - 100.0).abs() < 1e-9);
        assert!((mid.x0 + mid.x1 - 200.0).abs() < 1e-9);
        assert!(!start.overlaps(&end), "they only touch at x = 100");
        assert!(start.overlaps(&mid));
        let below = TextBox::new(100.0, 50.0 + 10.0 * (ASCENT + DESCENT) + 0.1, 10.0, Anchor::Start, false, "00");
        assert!(!start.overlaps(&below));
    }

    #[test]
    fn text_is_escaped() {
        let mut svg = Svg::new(10.0, 10.0);
        svg.text(1.0, 5.0, "a<b & \"c\"", TextStyle::default());
        let out = svg.finish("t");
        assert!(out.contains("a&lt;b &amp; &quot;c&quot;"));
    }
}
