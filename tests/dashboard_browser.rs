//! The dashboard in a real browser: headless Chromium driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`, installed by `.ci/run`), with screenshots of each page written
//! to `target/screenshots/` (README, *Dashboard*).

mod common;

use std::time::Duration;

use common::TestDb;
use common::api::TestApi;
use fantoccini::{ClientBuilder, Locator};
use serde_json::json;

/// A chromedriver of this test on a free port; stopped on drop.
struct Chromedriver {
    child: std::process::Child,
    port: u16,
}

impl Chromedriver {
    async fn start() -> Chromedriver {
        let port = common::free_port().unwrap();
        let child = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("chromedriver is required (apt-get install chromium chromium-driver): {e}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "chromedriver did not start listening");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Chromedriver { child, port }
    }

    /// A headless browser session of `width`×`height` pixels.
    async fn browser(&self, width: u32, height: u32) -> fantoccini::Client {
        let mut capabilities = serde_json::Map::new();
        let args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
            .iter()
            .map(|a| a.to_string())
            .chain([format!("--window-size={width},{height}")])
            .collect::<Vec<_>>();
        capabilities.insert("goog:chromeOptions".into(), json!({"args": args}));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a browser session")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where screenshots go: `target/screenshots/<name>.png`.
fn save_screenshot(name: &str, png: &[u8]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

#[tokio::test]
async fn the_runs_page_in_a_browser_filters_by_status_from_its_counts() {
    let api = TestApi::start(TestDb::sqlite().await, |_| {}).await;
    for (name, agent) in [("greets", "echo"), ("breaks", "fail")] {
        let plan = json!({"name": name, "start_step": "a", "steps": {"a": {"id": "a", "agent_name": agent}}});
        let id = api.post("/workflows", &plan).await.body["id"].as_str().unwrap().to_string();
        let run_id = api.post(&format!("/workflows/{id}/execute"), &json!({"input_data": {}})).await.body["run_id"]
            .as_str()
            .unwrap()
            .to_string();
        api.until_terminal(&run_id).await;
    }
    let driver = Chromedriver::start().await;
    let browser = driver.browser(1280, 900).await;
    // A browser opening the server's root lands on the dashboard.
    browser.goto(&api.url("/")).await.unwrap();
    assert!(browser.current_url().await.unwrap().as_str().ends_with("/ui/runs"));
    let rows = browser.find_all(Locator::Css("tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 2, "both runs listed");
    save_screenshot("runs-desktop", &browser.screenshot().await.unwrap());

    // The FAILED count is a link to the failed runs.
    let failed = browser.find(Locator::Css(r#".counts a.status-FAILED"#)).await.unwrap();
    failed.click().await.unwrap();
    browser.wait().for_url(&format!("{}/ui/runs?status=FAILED", api.base).parse().unwrap()).await.unwrap();
    let rows = browser.find_all(Locator::Css("tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].text().await.unwrap().contains("FAILED"));
    browser.close().await.unwrap();

    // Readable on a phone: the optional columns fold away.
    let phone = driver.browser(390, 844).await;
    phone.goto(&api.url("/ui/runs")).await.unwrap();
    let created = phone.find(Locator::Css("th.optional")).await.unwrap();
    assert!(!created.is_displayed().await.unwrap(), "secondary columns hidden on a narrow screen");
    save_screenshot("runs-phone", &phone.screenshot().await.unwrap());
    phone.close().await.unwrap();
    api.stop().await;
}
