#[warren::service(topic = "t", version = "1.0")]
pub trait Service {
    async fn new(&self) -> u32;
    async fn clone(&self) -> u32;
    async fn call(&self) -> u32;
    async fn _private(&self) -> u32;
}

fn main() {}
