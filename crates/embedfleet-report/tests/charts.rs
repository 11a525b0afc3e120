//! The charts parse as SVG, and in each no two labels' boxes overlap and none leaves the canvas,
//! computed from the positions and sizes the chart code wrote, over the shapes real runs have.

mod common;

use embedfleet_report::charts::{dims_chart, metrics_chart, training_chart};
use embedfleet_report::svg::TextBox;
use embedfleet_report::{DimResult, HitRate, LogRow, ModelResult, TrainingCurve};
use quick_xml::events::Event;

struct Parsed {
    width: f64,
    height: f64,
    labels: Vec<TextBox>,
    /// Texts centred under a point at the tick size: the step axis's labels.
    ticks: Vec<String>,
}

/// Every `<text>` of an SVG document as the box it covers; panics if the XML is malformed.
fn parse(svg: &str) -> Parsed {
    let mut reader = quick_xml::Reader::from_str(svg);
    let (mut width, mut height) = (0.0, 0.0);
    let mut labels = Vec::new();
    let mut ticks = Vec::new();
    let mut open: Option<(f64, f64, f64, String, Option<String>)> = None;
    let mut text = String::new();
    let mut depth = 0i32;
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == b"svg" => {
                depth += 1;
                let attr = |n: &str| e.try_get_attribute(n).unwrap().map(|a| String::from_utf8(a.value.to_vec()).unwrap());
                let view: Vec<f64> = attr("viewBox").expect("a viewBox").split(' ').map(|v| v.parse().unwrap()).collect();
                (width, height) = (view[2], view[3]);
            }
            Event::Start(e) if e.name().as_ref() == b"text" => {
                let attr = |n: &str| e.try_get_attribute(n).unwrap().map(|a| String::from_utf8(a.value.to_vec()).unwrap());
                let num = |n: &str| attr(n).unwrap_or_else(|| panic!("text without {n}")).parse::<f64>().unwrap();
                open = Some((num("x"), num("y"), num("font-size"), attr("text-anchor").unwrap_or_default(), attr("font-weight")));
                text.clear();
            }
            Event::Text(t) if open.is_some() => {
                text.push_str(&t.decode().unwrap());
            }
            Event::GeneralRef(r) if open.is_some() => {
                let name = String::from_utf8(r.to_vec()).unwrap();
                text.push(match name.as_str() {
                    "amp" => '&',
                    "lt" => '<',
                    "gt" => '>',
                    "quot" => '"',
                    "#39" => '\'',
                    other => panic!("unexpected entity {other}"),
                });
            }
            Event::End(e) if e.name().as_ref() == b"text" => {
                let (x, y, size, anchor, weight) = open.take().expect("a text was open");
                if anchor == "middle" && size == 11.0 {
                    ticks.push(text.clone());
                }
                labels.push(TextBox::from_attributes(x, y, size, &anchor, weight.as_deref(), &text));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(depth, 1, "one svg element");
    Parsed { width, height, labels, ticks }
}

/// Fails with every pair of overlapping labels and every label past the canvas.
fn assert_readable(name: &str, svg: &str) {
    let p = parse(svg);
    assert!(!p.labels.is_empty(), "{name}: no labels");
    let mut problems = Vec::new();
    for (i, a) in p.labels.iter().enumerate() {
        if a.x0 < 0.0 || a.y0 < 0.0 || a.x1 > p.width || a.y1 > p.height {
            problems.push(format!("'{}' leaves the {}x{} canvas: {a:?}", a.text, p.width, p.height));
        }
        for b in &p.labels[i + 1..] {
            if a.overlaps(b) {
                problems.push(format!("'{}' overlaps '{}'", a.text, b.text));
            }
        }
    }
    assert!(problems.is_empty(), "{name}:\n{}", problems.join("\n"));
}

fn models() -> Vec<ModelResult> {
    common::sample_report().models
}

#[test]
fn the_comparison_chart_keeps_labels_apart() {
    let two = models();
    assert_readable("two models", &metrics_chart(&two, "Retrieval metrics").unwrap());
    assert_readable("one model", &metrics_chart(&two[..1], "Retrieval metrics").unwrap());

    // Five models with long names: the legend wraps instead of running into itself.
    let mut many = Vec::new();
    for i in 0..5 {
        let mut m = two[i % 2].clone();
        m.name = format!("checkpoint-with-a-long-name-{i}");
        m.source = format!("s3://a-bucket/with/a/long/prefix/runs/run-1765000000-abcd/checkpoints/step-{}", i * 1000);
        many.push(m);
    }
    assert_readable("five models", &metrics_chart(&many, "Retrieval metrics").unwrap());

    // Two score functions: twice the rows, labels with the function's name.
    let mut both = two.clone();
    for m in &mut both {
        let dot: Vec<(String, f64)> = m.metrics.iter().map(|(k, v)| (k.replacen("cosine", "dot", 1), v * 0.9)).collect();
        m.metrics.extend(dot);
    }
    let svg = metrics_chart(&both, "Retrieval metrics").unwrap();
    assert!(svg.contains(">dot NDCG@10<"));
    assert_readable("cosine and dot", &svg);

    // Values at both ends of the scale still print inside the canvas.
    let mut extremes = two.clone();
    for v in extremes[0].metrics.values_mut() {
        *v = 0.0;
    }
    for v in extremes[1].metrics.values_mut() {
        *v = 1.0;
    }
    assert_readable("zeros and ones", &metrics_chart(&extremes, "Retrieval metrics").unwrap());
}

/// `base` with NDCG@10 `values` at each of `dims`.
fn with_dims(base: &ModelResult, name: &str, dims: &[usize], values: &[f64]) -> ModelResult {
    let at = |dim: usize, v: f64| DimResult {
        dim,
        hit_rate: HitRate { k: 5, hits: 0, total: 10, rate: 0.0 },
        metrics: [("cosine-NDCG@10".to_owned(), v)].into_iter().collect(),
    };
    ModelResult { name: name.into(), dims: dims.iter().zip(values).map(|(&d, &v)| at(d, v)).collect(), ..base.clone() }
}

#[test]
fn the_dimension_chart_labels_every_point_apart() {
    let m = &models()[0];
    // The human-question figures: plain and hard negative 0.0001 apart at 64 dimensions.
    let close = [
        with_dims(m, "base", &[384, 64], &[0.7322, 0.5773]),
        with_dims(m, "plain", &[384, 64], &[0.7474, 0.6063]),
        with_dims(m, "hard-negatives", &[384, 64], &[0.7556, 0.6062]),
    ];
    let svg = dims_chart(&close, "NDCG@10 by embedding dimension").unwrap();
    for label in ["0.732", "0.747", "0.756", "0.577", "0.606"] {
        assert!(svg.contains(&format!(">{label}<")), "{label}: every model's value is on the chart");
    }
    assert_eq!(svg.matches(">0.606<").count(), 2);
    assert_readable("three models, two close", &svg);

    // Four models at four dimensions, lines crossing and values equal.
    let dims = [384, 256, 128, 64];
    let many = [
        with_dims(m, "base", &dims, &[0.73, 0.70, 0.66, 0.58]),
        with_dims(m, "plain", &dims, &[0.75, 0.70, 0.64, 0.61]),
        with_dims(m, "hard-negatives", &dims, &[0.75, 0.71, 0.67, 0.60]),
        with_dims(m, "matryoshka", &dims, &[0.74, 0.72, 0.69, 0.62]),
    ];
    assert_readable("four models, four dimensions", &dims_chart(&many, "NDCG@10 by embedding dimension").unwrap());
}

fn curve(steps: usize, evals: &[(u64, f64)], best: Option<u64>) -> TrainingCurve {
    TrainingCurve {
        log: (1..=steps)
            .map(|s| LogRow {
                step: s,
                epoch: 0,
                loss: 1.0 / (1.0 + s as f64 / 10.0) + ((s * 31) % 7) as f64 / 20.0,
                lr: 2e-5 * (1.0 - s as f64 / (steps + 1) as f64),
            })
            .collect(),
        evaluations: evals.to_vec(),
        metric: "cosine-NDCG@10".into(),
        best_step: best,
    }
}

#[test]
fn the_training_chart_keeps_labels_apart() {
    let cases = [
        ("the demo's run", curve(48, &[(0, 0.8673), (48, 0.9331)], Some(48))),
        ("best in the middle", curve(120, &[(0, 0.80), (50, 0.86), (100, 0.87), (120, 0.85)], Some(100))),
        ("nothing beat the base", curve(60, &[(0, 0.90), (50, 0.88), (60, 0.89)], None)),
        (
            "the best is the first checkpoint",
            curve(300, &[(0, 0.5), (50, 0.91), (100, 0.90), (150, 0.89), (200, 0.88), (250, 0.80), (300, 0.70)], Some(50)),
        ),
        ("a flat metric", curve(20, &[(0, 0.5), (10, 0.5), (20, 0.5)], None)),
        ("three steps", curve(3, &[(0, 0.4), (3, 0.6)], Some(3))),
        ("a long run", curve(25_000, &(0..=50).map(|i| (i * 500, 0.7 + i as f64 * 0.004)).collect::<Vec<_>>(), Some(25_000))),
        ("no evaluations (a fleet trainer's own log)", curve(40, &[], None)),
    ];
    for (name, c) in &cases {
        let svg = training_chart(c).unwrap();
        assert_readable(name, &svg);
        // Step ticks are integers.
        let p = parse(&svg);
        assert_eq!(p.ticks.first().map(String::as_str), Some("0"), "{name}: the axis starts at step 0");
        assert!(p.ticks.iter().all(|t| t.parse::<u64>().is_ok()), "{name}: step ticks are integers: {:?}", p.ticks);
    }
    let only_evals = TrainingCurve {
        evaluations: vec![(0, 0.5), (10, 0.6)],
        metric: "cosine-NDCG@10".into(),
        best_step: Some(10),
        ..Default::default()
    };
    assert_readable("evaluations without a log", &training_chart(&only_evals).unwrap());
    assert!(training_chart(&TrainingCurve::default()).is_none());
}

#[test]
fn the_overlap_check_finds_overlaps() {
    // Two labels written on top of each other, and one past the right edge, must be reported.
    let svg = r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 50"><text x="10" y="20" font-size="12" text-anchor="start">Accuracy@1</text><text x="60" y="22" font-size="12" text-anchor="start">NDCG@10</text></svg>"#;
    let result = std::panic::catch_unwind(|| assert_readable("overlapping", svg));
    let message = result.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains("'Accuracy@1' overlaps 'NDCG@10'"), "{message}");
    assert!(message.contains("leaves the 100x50 canvas"), "{message}");
}
