"""Fine-tuning: OpenAI jobs (`openai`), local LoRA training (`local`), and the job records (`jobs`)."""
