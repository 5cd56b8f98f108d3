//! With private networks not allowed (the default), nothing but public addresses is fetched,
//! however the address is spelled.
use crate::helpers::{error_code, start_app, test_settings, FixtureServer};
use warp::http::StatusCode;

#[tokio::test]
async fn non_public_destinations_are_refused_in_every_spelling() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(data_dir.path(), &[]);
    settings.allow_private_networks = false;
    let fixtures = FixtureServer::start().await;
    let port = fixtures.addr.port();
    let app = start_app(settings, fixtures, data_dir).await;
    let urls = [
        format!("http://127.0.0.1:{port}/images/cat.bmp"),
        format!("http://localhost:{port}/images/cat.bmp"),
        format!("http://2130706433:{port}/images/cat.bmp"),
        format!("http://0x7f.1:{port}/images/cat.bmp"),
        format!("http://017700000001:{port}/images/cat.bmp"),
        format!("http://[::1]:{port}/images/cat.bmp"),
        format!("http://[::ffff:127.0.0.1]:{port}/images/cat.bmp"),
        "http://0.0.0.0/x.jpg".to_owned(),
        "http://[::]/x.jpg".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/x.jpg".to_owned(),
        "http://192.168.1.1/x.jpg".to_owned(),
        "http://172.16.0.1/x.jpg".to_owned(),
        "http://100.64.0.1/x.jpg".to_owned(),
        "http://[fd00::1]/x.jpg".to_owned(),
        "http://[fe80::1]/x.jpg".to_owned(),
        "http://224.0.0.1/x.jpg".to_owned(),
        "http://255.255.255.255/x.jpg".to_owned(),
        "http://192.0.2.1/x.jpg".to_owned(),
    ];
    for url in &urls {
        let (status, body) = app.classify(url).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::FORBIDDEN, "url_not_allowed"),
            "{url}: {body}"
        );
    }
    assert_eq!(
        app.fixtures.hits("/images/cat.bmp"),
        0,
        "nothing may reach the fixture server"
    );
}
