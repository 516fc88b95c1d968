//! PLACEHOLDER until the real client lands.
use std::time::Duration;
#[derive(Debug)]
pub struct Client;
pub struct CreateDroplet { pub name: String, pub region: String, pub size: String, pub image: String, pub backups: bool, pub ipv6: bool, pub monitoring: bool, pub tags: Vec<String>, pub user_data: String }
pub struct Droplet { pub id: u64, pub name: String, pub status: String, pub public_ipv4: Option<String> }
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct DoError;
impl DoError { pub fn status(&self) -> Option<u16> { None } }
impl Client {
    pub fn new(_b: &str, _t: String) -> Result<Client, DoError> { Ok(Client) }
    pub fn with_timeout(self, _d: Duration) -> Self { self }
    pub async fn create_droplet(&self, _r: &CreateDroplet) -> Result<Droplet, DoError> { Err(DoError) }
    pub async fn get_droplet(&self, _id: u64) -> Result<Droplet, DoError> { Err(DoError) }
    pub async fn delete_droplet(&self, _id: u64) -> Result<(), DoError> { Err(DoError) }
}
