#[warren::service(topic = "t", version = "1.0")]
pub trait Service {
    async fn add(&self, (a, b): (u32, u32)) -> u32;
    async fn name(&self, name: &str) -> u32;
}

fn main() {}
