//! The deploy refuses placeholder secrets (issue 10): docker/check-config.sh, which the
//! compose file runs before the database and PostgREST start, fails on the values of
//! docker/.env.example and on a short JWT secret, and passes real ones.

use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn example_values() -> Vec<(String, String)> {
    std::fs::read_to_string(format!("{ROOT}/docker/.env.example"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn check(vars: &[(String, String)]) -> (bool, String) {
    let out = Command::new("sh")
        .arg(format!("{ROOT}/docker/check-config.sh"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("EXAMPLE", format!("{ROOT}/docker/.env.example"))
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn placeholder_and_short_secrets_are_refused_real_ones_pass() {
    let example = example_values();
    assert!(
        example.iter().any(|(k, _)| k == "PGRST_JWT_SECRET"),
        "{example:?}"
    );
    let (ok, msg) = check(&example);
    assert!(!ok, "the example values were accepted");
    assert!(msg.contains("PGRST_JWT_SECRET"), "{msg}");

    let good = |jwt: &str| -> Vec<(String, String)> {
        example
            .iter()
            .map(|(k, v)| {
                let v = match k.as_str() {
                    "PGRST_JWT_SECRET" => jwt.to_string(),
                    "POSTGRES_PASSWORD" => "db-pass-9f3k2m1x8q".to_string(),
                    "AUTHENTICATOR_PASSWORD" => "auth-pass-7c6v5b4n3m".to_string(),
                    _ => v.clone(),
                };
                (k.clone(), v)
            })
            .collect()
    };
    let (ok, msg) = check(&good("0123456789abcdef0123456789abcdef-real-secret"));
    assert!(ok, "real values refused: {msg}");
    let (ok, msg) = check(&good("short-secret"));
    assert!(
        !ok && msg.contains("PGRST_JWT_SECRET"),
        "a 12-character JWT secret was accepted: {msg}"
    );
}
