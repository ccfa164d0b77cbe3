#[warren::service(topic = "t", version = "1.0")]
pub trait Service {
    #[cast]
    async fn notify(&self, x: u32) -> u32;
}

fn main() {}
