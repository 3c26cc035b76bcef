//! The OpenAPI document at `/api/openapi.json` and the reference page at `/api/docs`: served
//! without a token, OpenAPI 3.1, every documented operation secured (but the public ones),
//! and the page self-contained (no request leaves the panel).

use mpanel_tests::{TestApp, api::anon};

#[tokio::test]
async fn the_document_is_served_and_well_formed() {
    let app = TestApp::spawn().await;
    let doc = anon(&app).get("/api/openapi.json").await.expect(200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.contains_key("/api/jobs"), "{:?}", paths.keys());
    assert!(paths.contains_key("/api/jobs/{id}/retry"));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    app.cleanup().await;
}

#[tokio::test]
async fn the_reference_page_works_offline() {
    let app = TestApp::spawn().await;
    let res = reqwest::get(app.url("/api/docs")).await.unwrap();
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = res.text().await.unwrap();
    assert!(html.contains("fetch(\"openapi.json\")"));
    // Nothing is loaded from another origin.
    for needle in ["http://", "https://", "//cdn", "src=\"//"] {
        assert!(!html.contains(needle), "the page refers to {needle}");
    }
    app.cleanup().await;
}
