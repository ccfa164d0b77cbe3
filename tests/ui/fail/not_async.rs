#[warren::service(topic = "t", version = "1.0")]
pub trait Service {
    fn ping(&self) -> u32;
}

fn main() {}
