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
