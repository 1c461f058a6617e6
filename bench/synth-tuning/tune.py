"""How hard is the synthetic corpus? Two classifiers on the study's front end.

Front end (the study's): 10 segments of 65488 samples per track, 128-band log-mel (n_fft 2048, hop 512,
power_to_db ref=max, top_db 80) -> 128x128, standardised per cell on the train segments.

- mean-spectrum baseline: per track, the mean standardised log-mel over frames and segments (128 numbers);
  nearest class centroid fitted on the train tracks. Timbre only, no time structure.
- temporal proxy: per segment, band means/stds plus features of time structure (onset-strength
  autocorrelation = tempo and rhythm pattern, modulation spectra of 16 band envelopes); logistic regression,
  scored per segment and per track (mean of the segment probabilities).

Split: stratified 60/20/20 over tracks, repeated over N_SPLITS seeds (one split of 60 tracks is noisy); tracks with identical audio are kept in one split.
Usage: python tune.py CORPUS_ROOT [N_SPLITS]   (CORPUS_ROOT holds genres_original/; N_SPLITS default 5)
"""

import hashlib
import sys
from pathlib import Path

import librosa
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

SEG = 65488
NSEG = 10


def logmel(seg):
    s = librosa.feature.melspectrogram(y=seg, sr=22050, n_fft=2048, hop_length=512, n_mels=128)
    return librosa.power_to_db(s, ref=np.max, top_db=80.0)


def temporal_features(db):
    """Per-segment features that see time structure. `db` is a 128x128 log-mel (unstandardised)."""
    env = librosa.onset.onset_strength(S=db, sr=22050)
    env = env - env.mean()
    ac = np.correlate(env, env, mode="full")[len(env) - 1:]
    ac = ac[1:97] / (ac[0] + 1e-9)
    bands = db.reshape(16, 8, -1).mean(axis=1)
    bands = bands - bands.mean(axis=1, keepdims=True)
    mod = np.abs(np.fft.rfft(bands, axis=1))[:, 1:33]
    mod = np.log1p(mod).ravel()
    flux = np.abs(np.diff(db, axis=1))
    return np.concatenate([db.mean(1), db.std(1), flux.mean(1)[::4], ac, mod])


def load(root):
    root = Path(root)
    files = sorted(root.glob("genres_original/*/*.wav"))
    cache = root / ".tune-cache.npz"
    if cache.exists():
        z = np.load(cache, allow_pickle=True)
        return z["mels"], z["feats"], z["labels"], z["digests"], list(z["genres"])
    genres = sorted({f.parent.name for f in files})
    mels, feats, labels, digests = [], [], [], []
    for i, f in enumerate(files):
        y, sr = librosa.load(f, sr=None)
        assert sr == 22050
        n = min(NSEG, len(y) // SEG)
        segs = [logmel(y[k * SEG:(k + 1) * SEG]) for k in range(n)]
        while len(segs) < NSEG:  # keep arrays rectangular; repeated segments only for the few short tracks
            segs.append(segs[-1])
        mels.append(np.stack(segs).astype(np.float32))
        feats.append(np.stack([temporal_features(s) for s in segs]).astype(np.float32))
        labels.append(genres.index(f.parent.name))
        digests.append(hashlib.blake2b(y.tobytes(), digest_size=8).hexdigest())
        if i % 50 == 0:
            print(f"  {i}/{len(files)}", file=sys.stderr)
    out = (np.stack(mels), np.stack(feats), np.array(labels), np.array(digests), genres)
    np.savez(cache, mels=out[0], feats=out[1], labels=out[2], digests=out[3], genres=np.array(genres))
    return out


def split(labels, digests, seed=0):
    # One unit per distinct audio; its label is that of its first track.
    units = {}
    for i, d in enumerate(digests):
        units.setdefault(d, []).append(i)
    keys = sorted(units)
    ulab = [labels[units[k][0]] for k in keys]
    tr, rest = train_test_split(keys, train_size=0.6, stratify=ulab, random_state=seed)
    rlab = [labels[units[k][0]] for k in rest]
    va, te = train_test_split(rest, train_size=0.5, stratify=rlab, random_state=seed)
    idx = lambda ks: np.array(sorted(i for k in ks for i in units[k]))
    return idx(tr), idx(va), idx(te)


def evaluate(mels, feats, labels, digests, n_classes, seed):
    """Accuracies on val and test for one split: (baseline, proxy segment, proxy track) each."""
    tr, va, te = split(labels, digests, seed)
    mu = mels[tr].reshape(-1, 128, 128).mean(0)
    sd = mels[tr].reshape(-1, 128, 128).std(0) + 1e-6
    track_vec = ((mels - mu) / sd).mean(axis=(1, 3))  # mean over segments and frames -> (tracks, 128)
    cent = np.stack([track_vec[tr][labels[tr] == c].mean(0) for c in range(n_classes)])
    x = feats.reshape(len(labels), NSEG, -1)
    scaler = StandardScaler().fit(x[tr].reshape(-1, x.shape[-1]))
    clf = LogisticRegression(C=0.05, max_iter=3000)
    clf.fit(scaler.transform(x[tr].reshape(-1, x.shape[-1])), np.repeat(labels[tr], NSEG))
    out = {}
    for name, ix in [("val", va), ("test", te)]:
        nearest = ((track_vec[ix][:, None, :] - cent[None]) ** 2).sum(-1).argmin(1)
        p = clf.predict_proba(scaler.transform(x[ix].reshape(-1, x.shape[-1])))
        out[name] = (
            (nearest == labels[ix]).mean(),
            (p.argmax(1) == np.repeat(labels[ix], NSEG)).mean(),
            (p.reshape(len(ix), NSEG, -1).mean(1).argmax(1) == labels[ix]).mean(),
        )
        out[name + "_pred"] = (labels[ix], nearest)
    return out


def main():
    mels, feats, labels, digests, genres = load(sys.argv[1])
    n_splits = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    runs = [evaluate(mels, feats, labels, digests, len(genres), seed) for seed in range(n_splits)]
    names = ["mean-spectrum nearest centroid (track)", "temporal proxy, logreg (segment)",
             "temporal proxy, logreg (track vote)"]
    print(f"{len(labels)} tracks; mean +- std over {n_splits} random 60/20/20 splits")
    for k, name in enumerate(names):
        for part in ["val", "test"]:
            v = np.array([r[part][k] for r in runs])
            print(f"  {name:40s} {part:4s} {v.mean():.3f} +- {v.std():.3f}")
    conf = np.zeros((len(genres), len(genres)), int)
    for r in runs:
        for part in ["val", "test"]:
            for t, p in zip(*r[part + "_pred"]):
                conf[t, p] += 1
    print("baseline confusion, all splits, val+test (rows true):", " ".join(g[:4] for g in genres))
    for g, row in zip(genres, conf):
        print(f"  {g[:9]:9s}", " ".join(f"{v:4d}" for v in row))


if __name__ == "__main__":
    main()
