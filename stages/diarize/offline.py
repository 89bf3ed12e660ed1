"""Offline speaker diarization from weights that ship in packages: silero-vad + resemblyzer d-vectors.

Resemblyzer's raw d-vectors of two speakers in one recording sit close together (cosine ~0.85),
because every d-vector shares a large common component. Subtracting the recording's mean
embedding removes it, and what is left separates the speakers well. So:

1. speech regions from silero-vad;
2. d-vectors of 1.6 s windows: a coarse grid (hop 0.2 s) to cluster, a dense grid (hop 0.1 s)
   to place boundaries;
3. spectral clustering of the centred coarse embeddings, speaker count from the eigengap
   ratio of the normalised Laplacian (k = 1 when no gap is clear);
4. resegmentation: every dense window is scored against each speaker's centroid, the scores
   are spread over the 10 ms frames each window covers, and a Viterbi pass with a speaker
   change penalty picks the frame labels, so turn boundaries move to where the voices change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh

SR = 16000
HOP_S = 0.01  # resemblyzer's mel frame step


@dataclass
class Turn:
    start_s: float
    end_s: float
    speaker: int


@dataclass
class Voices:
    """One waveform's speech as the diarizer sees it: VAD regions, mel frames, d-vectors."""
    regions: list[tuple]
    mel: np.ndarray  # (F, 40), 10 ms frames
    speech: np.ndarray  # (F,) bool
    coarse: np.ndarray  # mel frames the clustering windows are centred on
    e_coarse: np.ndarray  # their d-vectors
    dense: np.ndarray | None = None  # the resegmentation grid
    e_dense: np.ndarray | None = None  # its d-vectors


def speech_regions(wav: np.ndarray, vad_model, threshold: float = 0.5, min_silence_ms: int = 100) -> list[tuple]:
    """(start_s, end_s) of speech according to silero-vad."""
    import torch
    from silero_vad import get_speech_timestamps

    ts = get_speech_timestamps(torch.from_numpy(wav), vad_model, sampling_rate=SR, threshold=threshold,
                               min_silence_duration_ms=min_silence_ms, speech_pad_ms=30, return_seconds=True)
    return [(float(t["start"]), float(t["end"])) for t in ts]


def window_embeddings(encoder, mel: np.ndarray, centers: np.ndarray, win: int) -> np.ndarray:
    """d-vectors of `win`-frame mel windows centred on `centers`; edges are padded by reflection."""
    import torch

    half = win // 2
    padded = np.pad(mel, ((half, win), (0, 0)), mode="reflect")
    # (N, win, 40): window i covers mel frames centers[i]-half .. centers[i]-half+win
    batch = np.stack([padded[c:c + win] for c in centers]).astype(np.float32)
    out = []
    with torch.no_grad():
        for i in range(0, len(batch), 128):
            out.append(encoder(torch.from_numpy(batch[i:i + 128])).numpy())
    return np.concatenate(out) if out else np.zeros((0, 256), np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def spectral_clusters(x: np.ndarray, max_speakers: int, gap_ratio: float, prune: float,
                      num_speakers: int | None = None) -> np.ndarray:
    """Cluster unit vectors; k from the largest ratio of consecutive Laplacian eigenvalues."""
    from sklearn.cluster import KMeans

    n = len(x)
    if n < 4 or num_speakers == 1:
        return np.zeros(n, int)
    sim = x @ x.T
    keep = max(2, int(prune * n))
    thr = np.sort(sim, axis=1)[:, -keep][:, None]
    aff = np.clip(np.where(sim >= thr, sim, 0.0), 0.0, None)
    aff = (aff + aff.T) / 2
    d = 1.0 / np.sqrt(aff.sum(1) + 1e-9)
    lap = np.eye(n) - d[:, None] * aff * d[None, :]
    vals, vecs = eigh(lap)
    kmax = min(max_speakers, n - 1)
    if num_speakers:
        k = min(num_speakers, kmax)
    else:
        ratios = vals[2:kmax + 1] / np.maximum(vals[1:kmax], 1e-6)  # ratios[i]: lambda_{i+3} / lambda_{i+2}
        k = int(np.argmax(ratios)) + 2 if len(ratios) and ratios.max() >= gap_ratio else 1
    if k == 1:
        return np.zeros(n, int)
    emb = _unit(vecs[:, :k])
    return KMeans(k, n_init=10, random_state=0).fit_predict(emb)


def viterbi(scores: np.ndarray, switch_penalty: float) -> np.ndarray:
    """Best label path for (T, K) frame scores with a fixed cost per speaker change."""
    t_len, k = scores.shape
    back = np.zeros((t_len, k), int)
    acc = scores[0].copy()
    for t in range(1, t_len):
        stay = acc
        best = acc.argmax()
        move = acc[best] - switch_penalty
        back[t] = np.where(stay >= move, np.arange(k), best)
        acc = np.maximum(stay, move) + scores[t]
    path = np.zeros(t_len, int)
    path[-1] = acc.argmax()
    for t in range(t_len - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def runs(labels: np.ndarray, mask: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, end, label) of constant runs of labels where mask is True."""
    out, start = [], None
    for i in range(len(labels) + 1):
        on = i < len(labels) and mask[i]
        if start is not None and (not on or labels[i] != labels[start]):
            out.append((start, i, int(labels[start])))
            start = None
        if start is None and on:
            start = i
    return out


class ResemblyzerDiarizer:
    """Who speaks when, from silero-vad and resemblyzer weights that ship in their packages."""

    backend = "resemblyzer"

    def __init__(self, max_speakers: int = 8, num_speakers: int | None = None, gap_ratio: float = 2.5,
                 prune: float = 0.3, window_s: float = 1.6, coarse_hop_s: float = 0.2, dense_hop_s: float = 0.1,
                 spread_s: float = 0.4, switch_penalty: float = 4.0, vad_threshold: float = 0.5,
                 max_windows: int = 3000):
        self.max_speakers, self.num_speakers = max_speakers, num_speakers
        self.gap_ratio, self.prune = gap_ratio, prune
        self.win = int(round(window_s / HOP_S))
        self.coarse_hop, self.dense_hop = int(round(coarse_hop_s / HOP_S)), int(round(dense_hop_s / HOP_S))
        self.spread, self.switch_penalty = int(round(spread_s / HOP_S)), switch_penalty
        self.vad_threshold, self.max_windows = vad_threshold, max_windows
        self.vad = self.encoder = None

    def load(self) -> ResemblyzerDiarizer:
        from resemblyzer import VoiceEncoder
        from silero_vad import load_silero_vad

        self.vad = load_silero_vad()
        self.encoder = VoiceEncoder("cpu", verbose=False)
        return self

    def __call__(self, wav: np.ndarray) -> tuple[list[Turn], list[tuple]]:
        """Speaker turns and the VAD speech regions of a 16 kHz mono waveform."""
        voices = self.embed(wav)
        return (self.label(voices), voices.regions) if voices else ([], [])

    def embed(self, wav: np.ndarray) -> Voices | None:
        """The waveform's speech and d-vectors, ready to be labelled (None without speech)."""
        from resemblyzer.audio import normalize_volume, wav_to_mel_spectrogram

        regions = speech_regions(wav, self.vad, self.vad_threshold)
        if not regions:
            return None
        mel = wav_to_mel_spectrogram(normalize_volume(wav, -30))  # (F, 40), one frame per 10 ms
        speech = np.zeros(len(mel), bool)
        for s, e in regions:
            speech[int(s / HOP_S):int(np.ceil(e / HOP_S))] = True
        speech_idx = np.flatnonzero(speech)
        # clustering is O(n^3) in windows: thin the coarse grid on long sources (~10 min of speech at 0.2 s)
        coarse = speech_idx[:: max(self.coarse_hop, len(speech_idx) // self.max_windows + 1)]
        e_coarse = window_embeddings(self.encoder, mel, coarse, self.win)
        return Voices(regions, mel, speech, coarse, e_coarse)

    def label(self, voices: Voices, num_speakers: int | None = None) -> list[Turn]:
        """Speaker turns of embedded speech; num_speakers fixes the count (else the diarizer's own
        setting, else the eigengap). The dense grid is embedded once per Voices, on first need."""
        mean = voices.e_coarse.mean(0)
        x = _unit(voices.e_coarse - mean)
        fixed = num_speakers or self.num_speakers
        labels = spectral_clusters(x, self.max_speakers if fixed else self.most_voices(voices), self.gap_ratio,
                                   self.prune, fixed)
        k = labels.max() + 1
        if k == 1:
            frame_labels = np.zeros(len(voices.mel), int)
        else:
            if voices.e_dense is None:
                voices.dense = np.flatnonzero(voices.speech)[:: self.dense_hop]
                voices.e_dense = self._dense_embeddings(voices.mel, voices.dense, voices.coarse, voices.e_coarse)
            centroids = _unit(np.stack([x[labels == j].mean(0) for j in range(k)]))
            frame_labels = self._resegment(_unit(voices.e_dense - mean) @ centroids.T, voices.dense, voices.speech)
        return [Turn(round(s * HOP_S, 3), round(e * HOP_S, 3), lab) for s, e, lab in runs(frame_labels, voices.speech)]

    def most_voices(self, voices: Voices) -> int:
        """The most speakers the eigengap may find: one per window's length of speech. Two voices are told
        apart by windows that share no audio; in less speech than two windows every window overlaps the
        others, their d-vectors differ by the words they hold, and the chain of windows through the
        words splits like the voices of a conversation (13 of 13 excerpts of one speaker in pyannote's
        sample with 1.4-3 s of speech came out as 2-4 voices, GRID's 2 s sentences as 3 or 4). Longer
        speech is left to the eigengap. A count the caller fixes is not bounded."""
        return max(1, min(self.max_speakers, int(voices.speech.sum()) // self.win))

    def _dense_embeddings(self, mel: np.ndarray, dense: np.ndarray, coarse: np.ndarray, e_coarse: np.ndarray) -> np.ndarray:
        """d-vectors on the dense grid, reusing the coarse grid's where the centres coincide (a third of the LSTM)."""
        pos = np.clip(np.searchsorted(coarse, dense), 0, len(coarse) - 1)
        known = coarse[pos] == dense
        out = np.empty((len(dense), e_coarse.shape[1]), np.float32)
        out[known] = e_coarse[pos[known]]
        out[~known] = window_embeddings(self.encoder, mel, dense[~known], self.win)
        return out

    def _resegment(self, scores: np.ndarray, centers: np.ndarray, speech: np.ndarray) -> np.ndarray:
        """Frame labels from window scores spread by a triangular kernel, then Viterbi."""
        n, k = len(speech), scores.shape[1]
        acc, wsum = np.zeros((n, k)), np.zeros(n)
        acc[centers] = scores
        wsum[centers] = 1.0
        kernel = 1.0 - np.abs(np.arange(-self.spread, self.spread + 1)) / (self.spread + 1)
        acc = np.stack([np.convolve(acc[:, j], kernel, mode="same") for j in range(k)], axis=1)
        wsum = np.convolve(wsum, kernel, mode="same")
        idx = np.flatnonzero(speech)
        frame_scores = acc[idx] / np.maximum(wsum[idx, None], 1e-9)
        labels = np.zeros(n, int)
        labels[idx] = viterbi(frame_scores, self.switch_penalty)
        return labels
