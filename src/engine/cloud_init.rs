//! PLACEHOLDER until the real renderer lands.
pub struct CloudInit<'a> {
    pub engine_url: &'a str,
    pub agent_id: &'a str,
    pub enroll_token: &'a str,
    pub citrusd_url: &'a str,
    pub citrusd_sha256: &'a str,
}
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct CloudInitError;
pub fn render(_p: &CloudInit) -> Result<String, CloudInitError> {
    Err(CloudInitError)
}
