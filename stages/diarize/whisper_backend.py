"""Language and transcript per segment with openai-whisper, from a checkpoint file the user provides.

Whisper's checkpoints live on a download server, not in the package, so the stage only
transcribes when `whisper_checkpoint` points at a local `.pt` ({"dims": ..., "model_state_dict": ...}).
"""

from __future__ import annotations

import numpy as np

SR = 16000
CHUNK_S = 30  # whisper's fixed input length


class WhisperTranscriber:
    def __init__(self, checkpoint: str, language: str | None = None, max_tokens: int = 224):
        self.checkpoint, self.language, self.max_tokens = checkpoint, language, max_tokens
        self.model = None

    def load(self) -> WhisperTranscriber:
        import whisper

        self.model = whisper.load_model(self.checkpoint, device="cpu")
        return self

    def _mel(self, audio: np.ndarray):
        import whisper

        audio = whisper.pad_or_trim(audio.astype(np.float32))
        return whisper.log_mel_spectrogram(audio, n_mels=self.model.dims.n_mels).to(self.model.device)

    def __call__(self, audio: np.ndarray) -> tuple[str | None, str]:
        """(language code, text) for a 16 kHz mono stretch of any length."""
        import whisper

        language = self.language
        if language is None:
            if self.model.is_multilingual:
                _, probs = self.model.detect_language(self._mel(audio[: CHUNK_S * SR]))
                language = max(probs, key=probs.get)
            else:
                language = "en"
        options = whisper.DecodingOptions(language=language, without_timestamps=True, fp16=False,
                                          sample_len=min(self.max_tokens, self.model.dims.n_text_ctx // 2),
                                          temperature=0.0)
        texts = []
        for i in range(0, max(len(audio), 1), CHUNK_S * SR):
            result = whisper.decode(self.model, self._mel(audio[i:i + CHUNK_S * SR]), options)
            texts.append(result.text.strip())
        return language, " ".join(t for t in texts if t)
