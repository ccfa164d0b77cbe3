#[warren::service(topic = "t", version = "1.0")]
pub trait Service {
    async fn timeout(&self) -> u32;
    async fn _private(&self) -> u32;
}

fn main() {}
