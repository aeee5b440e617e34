//! The real `openai` Python client against the server (`tests/serve/openai_client.py`): chat,
//! completions, streaming, stop, `n`, seed and logprobs. `.ci/run` installs the pinned client
//! into a venv and names its python in `SMELT_OPENAI_PYTHON`; without it the test says it
//! skips (and fails under CI).

use super::*;

#[test]
fn the_openai_python_client_works_against_the_server() {
    let Some(python) = std::env::var_os("SMELT_OPENAI_PYTHON") else {
        smelt::codegen::skip::missing_tool(
            "the_openai_python_client_works_against_the_server",
            "SMELT_OPENAI_PYTHON is not set (a python with the openai package; .ci/run makes one)",
        );
        return;
    };
    let server = Server::start(&[]);
    let script = common::root().join("tests/serve/openai_client.py");
    let out = Command::new(python).arg(script).arg(format!("{}/v1", server.url)).arg(NAME).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openai client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("openai client: all checks passed"), "{stdout}");
    eprintln!("{stdout}");
    server.wait_drained(Duration::from_secs(5));
}
