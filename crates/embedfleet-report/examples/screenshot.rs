//! Screenshots of a page in headless Chromium, for looking at a report:
//! `cargo run -p embedfleet-report --example screenshot -- out/results/report.html shots/report [1280]`
//! writes `shots/report.png` (the whole page) and `shots/report-1.png`, `-2`, … (1200 px tall parts
//! that an image viewer shows at full size).

#[path = "../tests/chrome/mod.rs"]
mod chrome;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(page), Some(prefix)) = (args.first(), args.get(1)) else {
        eprintln!("usage: screenshot PAGE OUT_PREFIX [WIDTH]");
        std::process::exit(2);
    };
    let width: u32 = args.get(2).and_then(|w| w.parse().ok()).unwrap_or(1280);
    let mut browser = chrome::Chrome::start();
    browser.viewport(width, 900);
    let errors = browser.open(std::path::Path::new(page));
    if !errors.0.is_empty() {
        eprintln!("the page logged errors: {:?}", errors.0);
    }
    let height = browser.eval("document.documentElement.scrollHeight").as_f64().unwrap_or(900.0);
    if let Some(dir) = std::path::Path::new(prefix).parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(format!("{prefix}.png"), browser.screenshot()).unwrap();
    let part: f64 = 1200.0;
    let mut y = 0.0;
    let mut i = 1;
    while y < height {
        let png = browser.screenshot_clip(0.0, y, width as f64, part.min(height - y));
        std::fs::write(format!("{prefix}-{i}.png"), png).unwrap();
        y += part;
        i += 1;
    }
    println!("{} px tall, {} parts", height, i - 1);
}
