//! The dashboard over HTTP, with the executor running: the Runs page's counts, filters, paging and
//! errors on both backends, `/` for browsers and for API clients, and the embedded assets.

mod common;

use common::TestDb;
use common::api::TestApi;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION};
use serde_json::json;

/// Creates a one-step workflow calling `agent` and runs it to its end; answers the run_id.
async fn run_to_end(api: &TestApi, name: &str, agent: &str, input: serde_json::Value) -> String {
    let plan = json!({"name": name, "start_step": "a", "steps": {"a": {"id": "a", "agent_name": agent, "input_mapping": input}}});
    let created = api.post("/workflows", &plan).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let id = created.body["id"].as_str().unwrap().to_string();
    let accepted = api.post(&format!("/workflows/{id}/execute"), &json!({"input_data": {}})).await;
    let run_id = accepted.body["run_id"].as_str().unwrap().to_string();
    api.until_terminal(&run_id).await;
    run_id
}

async fn page(api: &TestApi, path: &str) -> (StatusCode, String) {
    let response = api.client.get(api.url(path)).header(ACCEPT, "text/html").send().await.unwrap();
    let status = response.status();
    assert_eq!(response.headers()[CONTENT_TYPE], "text/html; charset=utf-8", "{path}");
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn the_runs_page_counts_filters_and_pages_on_both_backends() {
    for db in TestDb::each().await {
        let api = TestApi::start(db, |_| {}).await;
        let backend = api.db.backend();
        let done = run_to_end(&api, "greets", "echo", json!({"x": 1})).await;
        let failed = run_to_end(&api, "breaks", "fail", json!({"message": "the <b>bad</b> kind"})).await;

        let (status, html) = page(&api, "/ui/runs").await;
        assert_eq!(status, StatusCode::OK, "{backend:?}");
        assert!(html.contains(&done) && html.contains(&failed), "{backend:?}: both runs listed");
        assert!(html.contains(r#"COMPLETED<span class="n">1</span>"#), "{backend:?}: a true count per status");
        assert!(html.contains(r#"FAILED<span class="n">1</span>"#), "{backend:?}");
        assert!(html.contains(r#"All<span class="n">2</span>"#), "{backend:?}");
        // The agent's error is shown as text, never as markup.
        assert!(
            html.contains("the &#60;b&#62;bad&#60;/b&#62; kind") || html.contains("the &lt;b&gt;bad&lt;/b&gt; kind"),
            "{backend:?}: escaped"
        );
        assert!(!html.contains("<b>bad</b>"), "{backend:?}");

        let (_, html) = page(&api, "/ui/runs?status=FAILED").await;
        assert!(html.contains(&failed) && !html.contains(&done), "{backend:?}: filtered by status");
        assert!(html.contains(r#"COMPLETED<span class="n">1</span>"#), "{backend:?}: counts ignore the status filter");
        let (_, html) = page(&api, "/ui/runs?workflow=greets").await;
        assert!(html.contains(&done) && !html.contains(&failed), "{backend:?}: filtered by workflow name");

        let (_, html) = page(&api, "/ui/runs?page_size=1").await;
        assert!(html.contains("Page 1 of 2"), "{backend:?}");
        assert!(html.contains(r#"href="/ui/runs?page=2&#38;page_size=1" rel="next""#), "{backend:?}: {html}");
        let (_, html) = page(&api, "/ui/runs?page_size=1&page=2").await;
        assert!(html.contains("Page 2 of 2") && html.contains(r#"rel="prev""#), "{backend:?}");

        // Bad input: the page says which field and why, with 422.
        let (status, html) = page(&api, "/ui/runs?created_after=yesterday&page_size=0").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{backend:?}");
        assert!(
            html.contains("created_after = &#34;yesterday&#34;")
                || html.contains("created_after = &quot;yesterday&quot;"),
            "{html}"
        );
        assert!(html.contains("page_size"), "{backend:?}");
        let (_, html) = page(&api, "/ui/runs?created_after=2000-01-01T00:00").await;
        assert!(html.contains(&done), "{backend:?}: a datetime-local value filters");
        api.stop().await;
    }
}

#[tokio::test]
async fn browsers_get_the_dashboard_api_clients_the_json_root_and_assets_are_embedded() {
    let api = TestApi::start(TestDb::sqlite().await, |_| {}).await;
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let browser = no_redirects
        .get(api.url("/"))
        .header(ACCEPT, "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), StatusCode::SEE_OTHER);
    assert_eq!(browser.headers()[LOCATION], "/ui/runs");
    let client = no_redirects.get(api.url("/")).header(ACCEPT, "application/json").send().await.unwrap();
    let root: serde_json::Value = client.json().await.unwrap();
    assert_eq!(root["status"], "operational", "API clients keep the platform's root");

    let htmx = api.client.get(api.url("/ui/assets/vendor/htmx.min.js")).send().await.unwrap();
    assert_eq!(htmx.status(), StatusCode::OK);
    assert_eq!(htmx.headers()[CONTENT_TYPE], "text/javascript");
    let etag = htmx.headers()[ETAG].clone();
    assert!(htmx.bytes().await.unwrap().len() > 10_000);
    let again =
        api.client.get(api.url("/ui/assets/vendor/htmx.min.js")).header(IF_NONE_MATCH, etag).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "a browser that has the file keeps it");
    let css = api.client.get(api.url("/ui/assets/app.css")).send().await.unwrap();
    assert_eq!(css.headers()[CONTENT_TYPE], "text/css");
    let missing = api.client.get(api.url("/ui/assets/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    api.stop().await;
}

/// Starts a workflow of one step calling `agent` with `input`; answers the run_id at once.
async fn start_run(api: &TestApi, name: &str, agent: &str, input: serde_json::Value) -> String {
    let plan = json!({"name": name, "start_step": "a", "steps": {"a": {"id": "a", "agent_name": agent, "input_mapping": input}}});
    let id = api.post("/workflows", &plan).await.body["id"].as_str().unwrap().to_string();
    let accepted = api.post(&format!("/workflows/{id}/execute"), &json!({"input_data": {}})).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{accepted:?}");
    accepted.body["run_id"].as_str().unwrap().to_string()
}

/// A client that shows redirects instead of following them, as the forms' answers are checked.
fn without_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

#[tokio::test]
async fn a_failed_runs_page_shows_every_attempt_its_backoffs_and_the_error_and_retries_it() {
    for db in TestDb::each().await {
        let api = TestApi::start(db, |_| {}).await;
        let backend = api.db.backend();
        let run_id = run_to_end(&api, "breaks", "fail", json!({"message": "the ledger said no", "times": 100})).await;
        let (status, html) = page(&api, &format!("/ui/runs/{run_id}")).await;
        assert_eq!(status, StatusCode::OK, "{backend:?}");
        assert!(html.contains(r#"id="run-status">FAILED"#), "{backend:?}");
        assert!(html.contains("the ledger said no"), "{backend:?}: the error is on the page");
        // The test policy allows 3 attempts (the contract's max_retries counts attempts): all of
        // one call, on one lane, with the 2 waits between them.
        assert_eq!(html.matches(r#"class="bar bar-FAILED""#).count(), 3, "{backend:?}");
        assert_eq!(html.matches(r#"<line class="gap""#).count(), 2, "{backend:?}");
        assert_eq!(html.matches(r#"class="lane-label""#).count(), 1, "{backend:?}");
        assert_eq!(html.matches("<details id=\"attempt-").count(), 3, "{backend:?}: each attempt's details");
        assert!(html.contains(r#"id="retry""#) && !html.contains(r#"id="cancel""#), "{backend:?}");
        assert!(!html.contains("sse-connect"), "{backend:?}: a finished run's page does not listen");

        // The Retry form: refused from another origin, taken from the dashboard's own.
        let client = without_redirects();
        let form = api.url(&format!("/ui/runs/{run_id}/retry"));
        let foreign = client.post(&form).header("origin", "https://elsewhere.example").send().await.unwrap();
        assert_eq!(foreign.status(), StatusCode::FORBIDDEN, "{backend:?}");
        let own = client.post(&form).header("origin", &api.base).send().await.unwrap();
        assert_eq!(own.status(), StatusCode::SEE_OTHER, "{backend:?}");
        assert_eq!(own.headers()[LOCATION].to_str().unwrap(), format!("/ui/runs/{run_id}"));
        let (run, _) = api
            .poll_run(&run_id, std::time::Duration::from_secs(60), |run| {
                run["status"] == "FAILED" && run["retry_count"] == 1
            })
            .await;
        assert_eq!(run["retry_count"], 1, "{backend:?}");
        let (_, html) = page(&api, &format!("/ui/runs/{run_id}")).await;
        assert_eq!(html.matches(r#"class="bar bar-FAILED""#).count(), 6, "{backend:?}: both rounds on the timeline");
        assert!(html.contains("(round 2)"), "{backend:?}");
        // A command the run's state does not allow is refused on the run's page, with the reason.
        let cancel = client
            .post(api.url(&format!("/ui/runs/{run_id}/cancel")))
            .header("origin", &api.base)
            .send()
            .await
            .unwrap();
        assert_eq!(cancel.status(), StatusCode::CONFLICT, "{backend:?}");
        let html = cancel.text().await.unwrap();
        assert!(html.contains("Can only cancel pending or running workflows. Current status: FAILED"), "{backend:?}");

        let (status, _) = page(&api, "/ui/runs/no-such-run").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{backend:?}");
        api.stop().await;
    }
}

/// Reads server-sent events from `response` until one named `name` arrives; fails after 20 s.
async fn next_event(response: &mut reqwest::Response, name: &str) {
    let wanted = format!("event: {name}\n");
    let mut seen = String::new();
    let read = async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(at) = seen.find(&wanted) {
                // Consume through the end of that event.
                if let Some(end) = seen[at..].find("\n\n") {
                    seen.drain(..at + end + 2);
                    return true;
                }
            }
        }
        false
    };
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), read).await;
    assert!(matches!(got, Ok(true)), "no `{name}` event arrived");
}

#[tokio::test]
async fn open_pages_hear_of_changes_cancel_works_and_streams_end_at_shutdown() {
    for db in TestDb::each().await {
        let api = TestApi::start(db, |_| {}).await;
        let backend = api.db.backend();
        let mut runs = api.client.get(api.url("/ui/events/runs")).send().await.unwrap();
        assert_eq!(runs.headers()[CONTENT_TYPE], "text/event-stream", "{backend:?}");
        next_event(&mut runs, "runs").await; // the one every stream opens with

        // A new run is news to the Runs page.
        let run_id = start_run(&api, "naps", "sleep", json!({"ms": 60_000})).await;
        next_event(&mut runs, "runs").await;

        // Its own page hears of its attempt, then of its cancellation.
        let mut run = api.client.get(api.url(&format!("/ui/events/runs/{run_id}"))).send().await.unwrap();
        next_event(&mut run, "run").await;
        api.poll_run(&run_id, std::time::Duration::from_secs(30), |run| run["status"] == "RUNNING").await;
        let (_, html) = page(&api, &format!("/ui/runs/{run_id}")).await;
        assert!(html.contains(r#"id="cancel""#) && html.contains("sse-connect"), "{backend:?}: live, cancellable");
        let cancelled = without_redirects()
            .post(api.url(&format!("/ui/runs/{run_id}/cancel")))
            .header("origin", &api.base)
            .send()
            .await
            .unwrap();
        assert_eq!(cancelled.status(), StatusCode::SEE_OTHER, "{backend:?}");
        next_event(&mut run, "run").await;
        let (done, _) = api.until_terminal(&run_id).await;
        assert_eq!(done["status"], "CANCELLED", "{backend:?}");

        // Shutting down does not wait for the open streams: they end.
        tokio::time::timeout(std::time::Duration::from_secs(30), api.stop()).await.expect("the server stops");
        let rest = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Ok(Some(_)) = runs.chunk().await {}
        })
        .await;
        assert!(rest.is_ok(), "{backend:?}: the stream ended");
    }
}

#[tokio::test]
async fn the_agents_page_shows_each_agents_recent_calls_and_error_rate() {
    for db in TestDb::each().await {
        let api = TestApi::start(db, |_| {}).await;
        let backend = api.db.backend();
        run_to_end(&api, "breaks", "fail", json!({"message": "no", "times": 100})).await;
        run_to_end(&api, "greets", "echo", json!({"x": 1})).await;
        let registered = api
            .post("/agents", &json!({"name": "pricing", "url": "http://127.0.0.1:9/price", "description": "prices"}))
            .await;
        assert_eq!(registered.status, StatusCode::CREATED, "{registered:?}");

        let (status, html) = page(&api, "/ui/agents").await;
        assert_eq!(status, StatusCode::OK, "{backend:?}");
        let row = |agent: &str| {
            let start =
                html.find(&format!(r#"<tr data-agent="{agent}">"#)).unwrap_or_else(|| panic!("{agent}: {html}"));
            let end = start + html[start..].find("</tr>").unwrap();
            html[start..end].to_string()
        };
        let fail = row("fail");
        assert!(fail.contains("<td>3</td>") && fail.contains("100.0 %"), "{backend:?}: three failed attempts: {fail}");
        let echo = row("echo");
        assert!(
            echo.contains("<td>1</td>") && echo.contains("0.0 %") && echo.contains("built-in"),
            "{backend:?}: {echo}"
        );
        let pricing = row("pricing");
        assert!(pricing.contains("registry") && pricing.contains("http://127.0.0.1:9/price"), "{backend:?}");
        assert!(pricing.contains("<td>0</td>"), "{backend:?}: no calls yet");
        api.stop().await;
    }
}

#[tokio::test]
async fn the_system_page_shows_what_runs_now_and_how_fast_attempts_end() {
    for db in TestDb::each().await {
        let api = TestApi::start(db, |_| {}).await;
        let backend = api.db.backend();
        run_to_end(&api, "greets", "echo", json!({"x": 1})).await;
        let napping = start_run(&api, "naps", "sleep", json!({"ms": 60_000})).await;
        api.poll_run(&napping, std::time::Duration::from_secs(30), |run| run["status"] == "RUNNING").await;

        let (status, html) = page(&api, "/ui/system").await;
        assert_eq!(status, StatusCode::OK, "{backend:?}");
        assert!(html.contains(r#"<h2 id="t-running">Running</h2><p class="big">1</p>"#), "{backend:?}: {html}");
        let owner = &api.config.executor.owner_id;
        let owner = if owner.is_empty() { "executor-" } else { owner.as_str() };
        assert!(html.contains(&format!(r#"<td class="mono">{owner}"#)), "{backend:?}: who runs it: {html}");
        // One run finished in the last minute: 1/60 runs/s; its one attempt has a latency.
        assert!(html.contains(r#"<p class="big">0.02</p><p class="muted">finished"#), "{backend:?}: {html}");
        assert!(html.contains("<dt>p50</dt>") && html.contains("<dt>attempts</dt><dd>1</dd>"), "{backend:?}: {html}");
        // The executors' consumer lag, read from the broker by the API process itself.
        let lag = html.split(r#"<p class="big" id="lag">"#).nth(1).and_then(|rest| rest.split('<').next());
        assert!(lag.is_some_and(|lag| lag.parse::<u64>().is_ok()), "{backend:?}: a lag figure: {html}");
        assert!(html.contains("requests not yet taken, over"), "{backend:?}: {html}");
        let cancelled = api.post(&format!("/runs/{napping}/cancel"), &json!({})).await;
        assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
        api.stop().await;
    }
}

#[tokio::test]
async fn with_a_token_set_a_browser_signs_in_once_and_the_cookie_opens_only_the_dashboard() {
    let api = TestApi::start(TestDb::sqlite().await, |config| config.api.auth_token = "t0ken".into()).await;
    let client = without_redirects();
    let html = |request: reqwest::RequestBuilder| request.header(ACCEPT, "text/html");

    // A browser that has not signed in is sent to sign in, and comes back where it was going.
    let asked = html(client.get(api.url("/ui/runs?status=FAILED"))).send().await.unwrap();
    assert_eq!(asked.status(), StatusCode::SEE_OTHER);
    assert_eq!(asked.headers()[LOCATION], "/ui/login?next=%2Fui%2Fruns%3Fstatus%3DFAILED");
    let login = html(client.get(api.url("/ui/login?next=%2Fui%2Fruns"))).send().await.unwrap();
    assert_eq!(login.status(), StatusCode::OK, "the sign-in page is open");
    let css = client.get(api.url("/ui/assets/app.css")).send().await.unwrap();
    assert_eq!(css.status(), StatusCode::OK, "and so are its assets");
    // Event streams and forms are refused, not redirected.
    let events = client.get(api.url("/ui/events/runs")).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::UNAUTHORIZED);

    let sign_in = |token: &str| {
        client
            .post(api.url("/ui/login"))
            .header("origin", &api.base)
            .form(&[("token", token), ("next", "/ui/runs?status=FAILED")])
            .send()
    };
    let wrong = sign_in("guess").await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(reqwest::header::SET_COOKIE).is_none());
    assert!(wrong.text().await.unwrap().contains("That is not the API"), "the form says why");
    let right = sign_in("t0ken").await.unwrap();
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    assert_eq!(right.headers()[LOCATION], "/ui/runs?status=FAILED");
    let set = right.headers()[reqwest::header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    assert!(!set.contains("t0ken"), "the cookie is not the token");
    let cookie = set.split(';').next().unwrap().to_string();

    let page = html(client.get(api.url("/ui/runs"))).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    let events = client.get(api.url("/ui/events/runs")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    drop(events);
    // The JSON API still wants the bearer token.
    let api_call = client.get(api.api("/runs")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(api_call.status(), StatusCode::UNAUTHORIZED);
    let bearer = client.get(api.api("/runs")).bearer_auth("t0ken").send().await.unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
    api.stop().await;
}
