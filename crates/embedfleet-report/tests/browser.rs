//! `report.html` in a real browser (Debian's headless chromium, loaded from disk): the headline
//! table holds the report's numbers, the per-question section is there and filters, nothing logs
//! an error, nothing overflows at 1280 px, and the page reads with scripts off.

mod chrome;
mod common;

use chrome::Chrome;
use common::{HOSTILE_QUESTION, sample_report};
use embedfleet_report::questions::changes;
use embedfleet_report::summary::{headline_columns, headline_values, verdict};
use serde_json::Value;
use std::path::PathBuf;

/// Where screenshots go: `EMBEDFLEET_SCREENSHOTS` when set (the notes' images), else a temp dir.
fn screenshot_dir(fallback: &std::path::Path) -> PathBuf {
    std::env::var_os("EMBEDFLEET_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|| fallback.to_owned())
}

/// The width of a PNG, from its IHDR chunk.
fn png_width(png: &[u8]) -> u32 {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    u32::from_be_bytes(png[16..20].try_into().unwrap())
}

/// Elements whose right edge passes the viewport, and the page's scroll width.
const OVERFLOW: &str = r#"(() => {
  const w = document.documentElement.clientWidth;
  const wide = Array.from(document.querySelectorAll('body *'))
    .filter(e => e.getBoundingClientRect().right > w + 0.5)
    .map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right));
  return {scroll: document.documentElement.scrollWidth, client: w, wide: wide.slice(0, 10)};
})()"#;

#[test]
fn the_report_page_holds_the_numbers_and_reads_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let report = sample_report();
    let page = embedfleet_report::write_local_report(dir.path(), &report).unwrap();
    let mut chrome = Chrome::start();
    let errors = chrome.open(&page);
    assert!(errors.0.is_empty(), "the page logged errors: {:?}", errors.0);

    // The verdict and the headline table, cell by cell.
    let v = verdict(&report.models);
    assert_eq!(chrome.eval("document.getElementById('verdict').textContent"), Value::from(v.text.clone()));
    let rows = chrome.eval(
        "Array.from(document.querySelectorAll('#headline-table tbody tr')).map(r => ({model: r.dataset.model, \
         cells: Array.from(r.querySelectorAll('td[data-metric]')).map(c => [c.dataset.metric, c.dataset.value, c.firstChild.textContent])}))",
    );
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), report.models.len());
    let columns = headline_columns(&report.models);
    for (row, model) in rows.iter().zip(&report.models) {
        assert_eq!(row["model"], Value::from(model.name.clone()));
        let cells = row["cells"].as_array().unwrap();
        assert_eq!(cells.len(), columns.len());
        for ((cell, column), value) in cells.iter().zip(&columns).zip(headline_values(model)) {
            let value = value.unwrap();
            assert_eq!(cell[0], Value::from(column.clone()));
            assert_eq!(cell[1].as_str().unwrap().parse::<f64>().unwrap(), value, "{column} of {}", model.name);
            assert_eq!(cell[2], Value::from(format!("{value:.4}")), "{column} of {} as shown", model.name);
        }
    }
    let delta =
        chrome.eval("document.querySelector('#headline-table tr[data-model=finetuned] td[data-metric=\"NDCG@10\"] .delta').className");
    assert_eq!(delta, Value::from("delta up"), "an improvement is marked as one");

    // The questions behind the numbers, in the order the report's data ranks them.
    let expected = changes(&report);
    let shown: Vec<String> =
        expected.improved.iter().take(25).chain(expected.worse.iter().take(25)).map(|c| c.query_id.to_owned()).collect();
    let ids = chrome.eval("Array.from(document.querySelectorAll('#questions article.q')).map(a => a.dataset.query)");
    assert_eq!(ids, serde_json::json!(shown));
    assert!(!expected.improved.is_empty() && !expected.worse.is_empty());
    let first = &expected.improved[0];
    let card = chrome.eval(&format!("document.querySelector('article.q[data-query=\"{}\"]').textContent", first.query_id));
    assert!(card.as_str().unwrap().contains(first.text), "the question's text is in its card");
    let highlighted = chrome.eval(&format!(
        "Array.from(document.querySelectorAll('article.q[data-query=\"{}\"] li.hit .cid')).map(e => e.textContent)",
        first.query_id
    ));
    assert!(highlighted.as_array().unwrap().iter().all(|id| first.relevant.contains(&id.as_str().unwrap().to_owned())));
    assert!(!highlighted.as_array().unwrap().is_empty(), "the right passage is highlighted where a model retrieved it");
    // Markup in a question is text, never code.
    assert_eq!(chrome.eval("typeof window.__injected"), Value::from("undefined"));
    let hostile = chrome.eval("Array.from(document.querySelectorAll('article.q h4')).map(h => h.textContent)");
    let in_page = hostile.as_array().unwrap().iter().any(|h| h.as_str() == Some(HOSTILE_QUESTION));
    let hostile_changed = expected.improved.iter().take(25).chain(expected.worse.iter().take(25)).any(|c| c.text == HOSTILE_QUESTION);
    assert_eq!(in_page, hostile_changed, "the question with markup shows as written");

    // The filter: shown by the script, and it narrows the cards.
    assert_eq!(chrome.eval("document.getElementById('q-filters').hidden"), Value::from(false));
    let visible = "Array.from(document.querySelectorAll('article.q')).filter(a => !a.hidden).length";
    assert_eq!(chrome.eval(visible), Value::from(shown.len()));
    let needle = first.text.split_whitespace().find(|w| w.len() > 3).unwrap();
    chrome.eval(&format!(
        "(() => {{ const i = document.getElementById('q-filter'); i.value = {}; i.dispatchEvent(new Event('input')); return true; }})()",
        serde_json::to_string(&first.text).unwrap()
    ));
    assert_eq!(chrome.eval(visible), Value::from(1), "filtering by a whole question leaves its card");
    chrome.eval("(() => { const r = document.querySelector('input[name=q-kind][value=worse]'); r.checked = true; r.dispatchEvent(new Event('change')); const i = document.getElementById('q-filter'); i.value = ''; i.dispatchEvent(new Event('input')); return true; })()");
    assert_eq!(
        chrome.eval(visible),
        Value::from(expected.worse.len().min(25)),
        "the kind filter shows the worse ones (filter word was {needle})"
    );
    assert_eq!(chrome.eval("document.getElementById('improved').hidden"), Value::from(true));

    // Nothing wider than the window at 1280 px.
    let overflow = chrome.eval(OVERFLOW);
    assert_eq!(overflow["client"], Value::from(1280));
    assert!(
        overflow["scroll"].as_u64().unwrap() <= 1280 && overflow["wide"].as_array().unwrap().is_empty(),
        "horizontal overflow: {overflow}"
    );
    let png = chrome.screenshot();
    assert_eq!(png_width(&png), 1280);
    let out = screenshot_dir(dir.path());
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("report-sample-1280.png"), &png).unwrap();

    // With scripts off every card shows, and the controls that need a script do not.
    let errors = chrome.reload(false);
    assert!(errors.0.is_empty(), "{:?}", errors.0);
    // Scripts back on without reloading: the page's own script did not run, so this is the page
    // as a reader without scripts has it.
    chrome.call("Emulation.setScriptExecutionDisabled", serde_json::json!({"value": false}));
    assert_eq!(chrome.eval(visible), Value::from(shown.len()));
    assert_eq!(chrome.eval("document.getElementById('q-filters').hidden"), Value::from(true));
}

#[test]
fn errors_on_the_page_are_caught() {
    // The check above could not fail if the browser never reported errors: make sure it does.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("broken.html");
    std::fs::write(&page, "<!doctype html><html><body><script>console.error('visible'); null.boom();</script></body></html>").unwrap();
    let mut chrome = Chrome::start();
    let errors = chrome.open(&page);
    assert_eq!(errors.0.len(), 2, "{:?}", errors.0);
    let wide = dir.path().join("wide.html");
    std::fs::write(&wide, "<!doctype html><html><body><div style='width:1500px'>wide</div></body></html>").unwrap();
    chrome.open(&wide);
    let overflow = chrome.eval(OVERFLOW);
    assert!(overflow["scroll"].as_u64().unwrap() > 1280 && !overflow["wide"].as_array().unwrap().is_empty(), "{overflow}");
}
