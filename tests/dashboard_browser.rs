//! The dashboard in a real browser: headless Chromium driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`, installed by `.ci/run`), with screenshots of each page written
//! to `target/screenshots/` (README, *Dashboard*).

mod common;

use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::TestDb;
use common::api::TestApi;
use fantoccini::{ClientBuilder, Locator};
use runvisor::config::RetryPolicy;
use serde_json::json;

/// A chromedriver of this test on a free port; stopped on drop.
struct Chromedriver {
    child: std::process::Child,
    port: u16,
    /// This test's turn, held until the process group is gone (fields drop after `Drop::drop`),
    /// so the next test never starts beside a dying Chromium. `None` once stopped by hand.
    turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

/// One browser test at a time: several Chromiums at once on two cores make every wait a race.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Chromedriver {
    /// Starts chromedriver once no other test of this file holds one.
    ///
    /// Why not just wait for the port to accept connections: the port comes from binding port 0
    /// and letting it go, and the other tests of this binary bind ephemeral ports of their own (API
    /// servers, client connections). If one of them takes the port first, chromedriver cannot listen
    /// on 127.0.0.1 — yet a connect succeeds, to the wrong server, and the session request fails
    /// later with "connection refused" (CI, stop 18). So the driver counts as started only once its
    /// own `/status` answers ready; otherwise it is stopped and tried again on another port.
    async fn start() -> Chromedriver {
        let turn = ONE_AT_A_TIME.lock().await;
        let mut turn = Some(turn);
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = common::free_port().unwrap();
            // In a process group of its own, so that stopping it stops the browsers it started too,
            // even when a failed test never closed its session.
            let child = std::process::Command::new("chromedriver")
                .process_group(0)
                .arg(format!("--port={port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("chromedriver is required (apt-get install chromium chromium-driver): {e}"));
            let mut driver = Chromedriver { child, port, turn: turn.take() };
            match driver.until_ready().await {
                Ok(()) => return driver,
                Err(why) => {
                    failures.push(format!("port {port}: {why}"));
                    turn = Some(driver.stop());
                }
            }
        }
        panic!("chromedriver did not start: {failures:?}");
    }

    /// Waits until this driver's own `/status` says it is ready for a session.
    async fn until_ready(&mut self) -> Result<(), String> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let status = format!("http://127.0.0.1:{}/status", self.port);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(exit) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("chromedriver exited ({exit})"));
            }
            if let Ok(response) = client.get(&status).send().await {
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                let message = body["value"]["message"].as_str().unwrap_or_default();
                if body["value"]["ready"] == json!(true) && message.contains("ChromeDriver") {
                    return Ok(());
                }
                if !message.contains("ChromeDriver") {
                    return Err(format!("another server answers on the port: {body}"));
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err("not ready within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the driver and its browsers, handing back the turn for another try.
    fn stop(mut self) -> tokio::sync::MutexGuard<'static, ()> {
        self.kill();
        self.turn.take().expect("a running driver holds the turn")
    }

    fn kill(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
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
        if self.turn.is_some() {
            self.kill();
        }
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
    assert_accessible(&browser, "the Runs page").await;

    // The FAILED count is a link to the failed runs.
    click(&browser, Locator::Css(r#".counts a.status-FAILED"#)).await;
    browser.wait().for_url(&format!("{}/ui/runs?status=FAILED", api.base).parse().unwrap()).await.unwrap();
    // Read in one go: the live region may be refreshed between two reads.
    let rows = browser
        .execute("return [...document.querySelectorAll('tbody tr')].map(row => row.textContent);", vec![])
        .await
        .unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].as_str().unwrap().contains("FAILED"));
    browser.close().await.unwrap();

    // Readable on a phone: the optional columns fold away.
    let phone = driver.browser(390, 844).await;
    phone.goto(&api.url("/ui/runs")).await.unwrap();
    let shown =
        phone.execute("return getComputedStyle(document.querySelector('th.optional')).display;", vec![]).await.unwrap();
    assert_eq!(shown, json!("none"), "secondary columns hidden on a narrow screen");
    save_screenshot("runs-phone", &phone.screenshot().await.unwrap());
    phone.close().await.unwrap();
    api.stop().await;
}

/// Waits until the text of the first element matching `css` contains `text`; fails after 30 s.
/// Polls the page as a person would look at it again; it reloads nothing.
async fn until_text(browser: &fantoccini::Client, css: &str, text: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && let Ok(seen) = element.text().await
            && seen.contains(text)
        {
            return seen;
        }
        assert!(tokio::time::Instant::now() < deadline, "`{css}` never showed {text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks what `locator` finds. A live region the server refreshed between finding and clicking
/// leaves a stale reference; the click is then made on the new element.
async fn click(browser: &fantoccini::Client, locator: Locator<'_>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let element = browser.wait().for_element(locator).await.unwrap();
        match element.click().await {
            Ok(()) => return,
            Err(error) if error.to_string().contains("stale element") => {
                assert!(tokio::time::Instant::now() < deadline, "{locator:?} kept being replaced");
            }
            Err(error) => panic!("clicking {locator:?}: {error}"),
        }
    }
}

/// Runs axe-core (tests/assets/axe-core, see its VERSIONS) on the page in the browser and fails on
/// any serious or critical violation of WCAG 2 A or AA: contrast, labels, names, landmarks, ARIA.
async fn assert_accessible(browser: &fantoccini::Client, page: &str) {
    browser.execute(include_str!("assets/axe-core/axe.min.js"), vec![]).await.expect("axe-core loads");
    let script = r#"
        const done = arguments[arguments.length - 1];
        axe.run(document, {runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}})
          .then(result => done(result.violations
              .filter(v => v.impact === "serious" || v.impact === "critical")
              .map(v => v.id + " (" + v.impact + "): " + v.nodes.map(n => n.target.join(" ")).slice(0, 5).join(", "))))
          .catch(error => done(["axe-core failed: " + error]));
    "#;
    let violations = browser.execute_async(script, vec![]).await.expect("axe-core runs");
    assert_eq!(violations, json!([]), "{page}: accessibility violations");
}

/// Starts a one-step workflow calling `agent` through the API; answers the run_id.
async fn start_run(api: &TestApi, name: &str, agent: &str, input: serde_json::Value) -> String {
    let plan = json!({"name": name, "start_step": "a", "steps": {"a": {"id": "a", "agent_name": agent, "input_mapping": input}}});
    let id = api.post("/workflows", &plan).await.body["id"].as_str().unwrap().to_string();
    api.post(&format!("/workflows/{id}/execute"), &json!({"input_data": {}})).await.body["run_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_run_started_through_the_api_appears_live_and_turns_completed() {
    let api = TestApi::start(TestDb::sqlite().await, |_| {}).await;
    let driver = Chromedriver::start().await;
    let browser = driver.browser(1280, 900).await;
    browser.goto(&api.url("/ui/runs")).await.unwrap();
    browser.find(Locator::Css(".empty")).await.expect("no runs yet");
    // A mark on this page's window: gone if the page were reloaded.
    browser.execute("window.notReloaded = true; return null;", vec![]).await.unwrap();

    let run_id = start_run(&api, "naps", "sleep", json!({"ms": 1500})).await;
    let row = format!("tbody tr[data-run='{run_id}']");
    let seen = until_text(&browser, &row, &run_id).await;
    assert!(seen.contains("PENDING") || seen.contains("RUNNING"), "appears before it ends: {seen}");
    save_screenshot("runs-live-running", &browser.screenshot().await.unwrap());
    until_text(&browser, &row, "COMPLETED").await;
    let kept = browser.execute("return window.notReloaded === true;", vec![]).await.unwrap();
    assert_eq!(kept, json!(true), "updated in place, not reloaded");
    browser.close().await.unwrap();
    api.stop().await;
}

#[tokio::test]
async fn a_failed_runs_page_shows_the_failed_attempts_their_retries_and_the_error() {
    // Backoffs long enough to see on the timeline (and in the README's picture of this page).
    let api = TestApi::start(TestDb::sqlite().await, |config| {
        config.executor.retry =
            RetryPolicy { max_retries: 3, initial_delay_ms: 300, max_delay_ms: 2_000, backoff_multiplier: 2.0 };
    })
    .await;
    // A checkout: load the order, then check stock and charge the card side by side; the card is
    // declined on every attempt.
    let plan = json!({
        "name": "checkout", "start_step": "load-order",
        "steps": {
            "load-order": {"id": "load-order", "agent_name": "sleep", "input_mapping": {"ms": 150, "order": 42}, "next_step": "checks"},
            "checks": {"id": "checks", "type": "parallel", "parallel_steps": ["reserve-stock", "charge-card"], "next_step": "ship"},
            "reserve-stock": {"id": "reserve-stock", "agent_name": "sleep", "input_mapping": {"ms": 400, "sku": "A-7"}},
            "charge-card": {"id": "charge-card", "agent_name": "fail",
                "input_mapping": {"message": "card declined: insufficient funds", "times": 100, "amount": 129.5}},
            "ship": {"id": "ship", "agent_name": "echo", "input_mapping": {"order": 42}}
        }
    });
    let id = api.post("/workflows", &plan).await.body["id"].as_str().unwrap().to_string();
    let run_id =
        api.post(&format!("/workflows/{id}/execute"), &json!({"input_data": {"order": 42}})).await.body["run_id"]
            .as_str()
            .unwrap()
            .to_string();
    api.until_terminal(&run_id).await;
    let driver = Chromedriver::start().await;
    let browser = driver.browser(1280, 900).await;
    browser.goto(&api.url("/ui/runs?status=FAILED")).await.unwrap();
    click(&browser, Locator::LinkText(&run_id)).await;
    browser.wait().for_url(&api.url(&format!("/ui/runs/{run_id}")).parse().unwrap()).await.unwrap();

    let error = browser.find(Locator::Css("#run-error")).await.unwrap().text().await.unwrap();
    assert!(error.contains("card declined: insufficient funds"), "{error}");
    // Three attempts of charge-card (the test policy's limit) on one lane, with the waits between
    // them; the other calls on lanes of their own.
    let bars = browser.find_all(Locator::Css("svg.timeline rect.bar-FAILED")).await.unwrap();
    assert_eq!(bars.len(), 3);
    assert_eq!(browser.find_all(Locator::Css("svg.timeline line.gap")).await.unwrap().len(), 2);
    let lanes = browser
        .execute(
            "return [...document.querySelectorAll('svg.timeline .lane-label')].map(l => l.lastChild.textContent);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(lanes, json!(["load-order", "reserve-stock", "charge-card"]));
    let groups = browser
        .execute(
            "return [...document.querySelectorAll('svg.timeline .lane-group')].map(l => l.lastChild.textContent);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(groups, json!(["checks: 2 calls"]), "the parallel block's members under its name");
    save_screenshot("run-failed", &browser.screenshot().await.unwrap());
    assert_accessible(&browser, "the Run page").await;
    // The plan graph: each step coloured by what happened to it; ship never ran.
    let outcomes = browser
        .execute("return [...document.querySelectorAll('.plan-graph [data-step]')].map(e => e.dataset.step + '=' + e.dataset.outcome);", vec![])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        json!([
            "load-order=COMPLETED",
            "checks=FAILED",
            "reserve-stock=COMPLETED",
            "charge-card=FAILED",
            "ship=NOT-RUN"
        ])
    );
    browser.execute("document.getElementById('plan-title').scrollIntoView(); return null;", vec![]).await.unwrap();
    save_screenshot("run-failed-plan", &browser.screenshot().await.unwrap());

    // A bar leads to its attempt: the details open, with the error.
    let last = bars.last().unwrap();
    let attempt = last.attr("data-attempt").await.unwrap().unwrap();
    last.click().await.unwrap();
    let details = browser.find(Locator::Id(&format!("attempt-{attempt}"))).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while details.attr("open").await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the attempt's details did not open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = details.text().await.unwrap();
    assert!(text.contains("attempt 3") && text.contains("card declined"), "{text}");
    save_screenshot("run-failed-attempt", &browser.screenshot().await.unwrap());
    browser.close().await.unwrap();

    let phone = driver.browser(390, 844).await;
    phone.goto(&api.url(&format!("/ui/runs/{run_id}"))).await.unwrap();
    save_screenshot("run-failed-phone", &phone.screenshot().await.unwrap());
    phone.close().await.unwrap();
    api.stop().await;
}

#[tokio::test]
async fn cancel_on_a_running_runs_page_ends_it_cancelled() {
    let api = TestApi::start(TestDb::sqlite().await, |_| {}).await;
    let run_id = start_run(&api, "naps", "sleep", json!({"ms": 60_000})).await;
    let driver = Chromedriver::start().await;
    let browser = driver.browser(1280, 900).await;
    browser.goto(&api.url(&format!("/ui/runs/{run_id}"))).await.unwrap();
    // Live: the page turns RUNNING by itself once the executor starts the run.
    until_text(&browser, "#run-status", "RUNNING").await;
    until_text(&browser, "ol.attempts", "RUNNING").await;
    save_screenshot("run-running", &browser.screenshot().await.unwrap());
    click(&browser, Locator::Id("cancel")).await;
    browser.accept_alert().await.expect("the page asks before cancelling");
    until_text(&browser, "#run-status", "CANCELLED").await;
    let (run, _) = api.until_terminal(&run_id).await;
    assert_eq!(run["status"], "CANCELLED");
    save_screenshot("run-cancelled", &browser.screenshot().await.unwrap());
    browser.close().await.unwrap();
    api.stop().await;
}

#[tokio::test]
async fn execute_with_invalid_json_shows_the_error_and_sends_nothing() {
    let api = TestApi::start(TestDb::sqlite().await, |_| {}).await;
    let plan = json!({"name": "greets", "start_step": "a", "steps": {"a": {"id": "a", "agent_name": "echo"}}});
    let id = api.post("/workflows", &plan).await.body["id"].as_str().unwrap().to_string();
    let driver = Chromedriver::start().await;
    let browser = driver.browser(1280, 900).await;
    browser.goto(&api.url("/ui/workflows")).await.unwrap();
    click(&browser, Locator::LinkText("greets")).await;
    browser.wait().for_url(&api.url(&format!("/ui/workflows/{id}")).parse().unwrap()).await.unwrap();

    let editor = browser.find(Locator::Id("input")).await.unwrap();
    editor.clear().await.unwrap();
    editor.send_keys(r#"{"name": "Ada",}"#).await.unwrap();
    let error = until_text(&browser, "#input-error", "not valid JSON").await;
    assert!(error.starts_with("input_data is not valid JSON"), "{error}");
    assert_eq!(editor.attr("aria-invalid").await.unwrap().as_deref(), Some("true"));
    let button = browser.find(Locator::Id("execute")).await.unwrap();
    assert!(!button.is_enabled().await.unwrap(), "the form cannot be sent");
    // Enter in the editor, or a forced submit, still sends nothing.
    browser.execute("document.querySelector('form.execute').requestSubmit(); return null;", vec![]).await.unwrap();
    save_screenshot("workflow-execute-invalid", &browser.screenshot().await.unwrap());
    assert!(browser.current_url().await.unwrap().as_str().ends_with(&format!("/ui/workflows/{id}")));
    let runs = api.get("/runs").await;
    assert_eq!(runs.body["total"], 0, "no run was created: {runs:?}");

    // Valid input starts a run and shows it.
    editor.clear().await.unwrap();
    editor.send_keys(r#"{"name": "Ada"}"#).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !button.is_enabled().await.unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "valid input did not enable the form");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(browser.find(Locator::Id("input-error")).await.unwrap().text().await.unwrap(), "");
    button.click().await.unwrap();
    until_text(&browser, "#run-status", "COMPLETED").await;
    assert!(browser.current_url().await.unwrap().as_str().contains("/ui/runs/run-"));
    let runs = api.get("/runs").await;
    assert_eq!(runs.body["total"], 1);
    assert_eq!(runs.body["items"][0]["input_data"], json!({"name": "Ada"}));
    browser.close().await.unwrap();
    api.stop().await;
}

#[tokio::test]
async fn the_workflows_agents_and_system_pages_read_on_a_laptop_and_a_phone() {
    let api = TestApi::start(TestDb::sqlite().await, |_| {}).await;
    let example: serde_json::Value =
        serde_json::from_str(include_str!("../examples/fork_join.json")).expect("the example parses");
    let id = api.post("/workflows", &example).await.body["id"].as_str().unwrap().to_string();
    let run_id = start_run(&api, "greets", "echo", json!({"x": 1})).await;
    api.until_terminal(&run_id).await;
    let driver = Chromedriver::start().await;
    for (width, height, size) in [(1280, 900, "desktop"), (390, 844, "phone")] {
        let browser = driver.browser(width, height).await;
        for (path, name, heading) in [
            (format!("/ui/workflows/{id}"), "workflow", "fork-join"),
            ("/ui/agents".to_string(), "agents", "Agents"),
            ("/ui/system".to_string(), "system", "System"),
        ] {
            browser.goto(&api.url(&path)).await.unwrap();
            let h1 = browser.find(Locator::Css("h1")).await.unwrap().text().await.unwrap();
            assert!(h1.contains(heading), "{path}: {h1}");
            // Nothing wider than the screen but the tables and the timeline, which scroll.
            let overflow = browser
                .execute("return document.documentElement.scrollWidth - document.documentElement.clientWidth;", vec![])
                .await
                .unwrap();
            assert!(overflow.as_i64().unwrap() <= 0, "{path} at {width} px is wider than the screen by {overflow}");
            save_screenshot(&format!("{name}-{size}"), &browser.screenshot().await.unwrap());
            if size == "desktop" {
                assert_accessible(&browser, &path).await;
            }
        }
        browser.close().await.unwrap();
    }
    api.stop().await;
}
