using System.Numerics;
using System.Runtime.CompilerServices;
using MemoryMarshal = System.Runtime.InteropServices.MemoryMarshal;
using DistributedBackprop.Kernels;
using DistributedBackprop.Network;

namespace DistributedBackprop.Optimizers;

/// <summary>
/// Applies one update to the flat parameter buffer from the step's gradient. Holds the optimizer state
/// (velocity, or Adam's moments) as flat buffers shaped like the parameters, so a checkpoint writes them
/// as they are. The loops are hand-vectorised with <see cref="Vector{T}"/>; each element sees the same
/// IEEE operations in the vector body and the scalar tail, so the result does not depend on SIMD width.
/// </summary>
public sealed class Optimizer
{
    private readonly Architecture _arch;

    public Optimizer(Architecture architecture, OptimizerSettings settings)
    {
        _arch = architecture;
        Settings = settings;
        int n = architecture.ParameterCount;
        switch (settings.Kind)
        {
            case OptimizerKind.Momentum:
                Velocity = new float[n];
                break;
            case OptimizerKind.Adam:
                FirstMoment = new float[n];
                SecondMoment = new float[n];
                break;
        }
    }

    public OptimizerSettings Settings { get; }

    private double _beta1Power = 1, _beta2Power = 1;
    private long _steps;

    /// <summary>Updates applied so far (Adam's t). Setting it (on resume) recomputes β1^t and β2^t.</summary>
    public long Steps
    {
        get => _steps;
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            _steps = value;
            // β^t by repeated multiplication in double: exact IEEE arithmetic, no pow(), so a resumed
            // run continues with the very same bits as an uninterrupted one.
            _beta1Power = 1;
            _beta2Power = 1;
            for (long t = 0; t < value; t++)
            {
                _beta1Power *= Settings.Beta1;
                _beta2Power *= Settings.Beta2;
            }
        }
    }

    /// <summary>Momentum buffer v (momentum only).</summary>
    public float[]? Velocity { get; }

    /// <summary>Adam's m (first moment).</summary>
    public float[]? FirstMoment { get; }

    /// <summary>Adam's v (second moment).</summary>
    public float[]? SecondMoment { get; }

    /// <summary>Named state tensors, for checkpoints.</summary>
    public IEnumerable<(string Name, float[] Values)> StateTensors()
    {
        if (Velocity is not null) yield return ("optimizer.velocity", Velocity);
        if (FirstMoment is not null) yield return ("optimizer.m", FirstMoment);
        if (SecondMoment is not null) yield return ("optimizer.v", SecondMoment);
    }

    /// <summary>w ← update(w, g) with learning rate γ = <paramref name="learningRate"/>.</summary>
    public void Apply(Span<float> parameters, ReadOnlySpan<float> gradient, float learningRate)
    {
        BeginStep();
        ApplyRange(parameters, gradient, learningRate, 0, _arch.ParameterCount);
    }

    /// <summary>Back to the state before the first update: velocity and moments 0, t = 0 (a replica's inner optimizer at each round's start).</summary>
    public void Reset()
    {
        if (Velocity is not null) Array.Clear(Velocity);
        if (FirstMoment is not null) Array.Clear(FirstMoment);
        if (SecondMoment is not null) Array.Clear(SecondMoment);
        Steps = 0;
    }

    /// <summary>Makes <paramref name="target"/> (an optimizer of the same model and settings) hold this one's state: t and every state tensor, bit for bit.</summary>
    public void CopyStateTo(Optimizer target)
    {
        if (target._arch.ParameterCount != _arch.ParameterCount || target.Settings != Settings)
        {
            throw new ArgumentException("the optimizer to copy into is for another model or other settings");
        }
        Velocity?.CopyTo(target.Velocity!, 0);
        FirstMoment?.CopyTo(target.FirstMoment!, 0);
        SecondMoment?.CopyTo(target.SecondMoment!, 0);
        target._steps = _steps;
        target._beta1Power = _beta1Power;
        target._beta2Power = _beta2Power;
    }

    /// <summary>Starts an update (advances t); follow with <see cref="ApplyRange"/> over every parameter once.</summary>
    public void BeginStep()
    {
        _steps++;
        _beta1Power *= Settings.Beta1;
        _beta2Power *= Settings.Beta2;
    }

    /// <summary>
    /// Updates parameters [start, start + count) of the step begun by <see cref="BeginStep"/>. The update is
    /// element-wise, so disjoint ranges may run on different threads and give the same bits as one call.
    /// Returns whether the new parameters, and Adam's new v, are all finite (<see cref="ApplySection"/> says why those).
    /// </summary>
    public bool ApplyRange(Span<float> parameters, ReadOnlySpan<float> gradient, float learningRate, int start, int count)
    {
        if (parameters.Length != _arch.ParameterCount || gradient.Length != _arch.ParameterCount)
        {
            throw new ArgumentException($"expected {_arch.ParameterCount} parameters and gradients, got {parameters.Length} and {gradient.Length}");
        }
        return ApplyWindow(parameters, gradient, 0, learningRate, start, start + count);
    }

    /// <summary>
    /// Updates a shard's slice: <paramref name="parameters"/> and <paramref name="gradient"/> hold parameters
    /// [start, start + length) of the model (the optimizer state stays indexed by the model's parameter index).
    /// Element for element the same arithmetic as <see cref="ApplyRange"/>, so K slices give one pass's bits.
    /// Returns whether the new parameters, and Adam's new v, are all finite.
    /// </summary>
    public bool ApplySlice(Span<float> parameters, ReadOnlySpan<float> gradient, float learningRate, int start)
    {
        if (parameters.Length != gradient.Length || start < 0 || (long)start + parameters.Length > _arch.ParameterCount)
        {
            throw new ArgumentException($"a slice of {parameters.Length} parameters and {gradient.Length} gradients at {start} does not fit {_arch.ParameterCount} parameters");
        }
        return ApplyWindow(parameters, gradient, start, learningRate, start, start + parameters.Length);
    }

    /// <summary>Parameters [start, end) of the model; element 0 of the spans is parameter <paramref name="origin"/>.</summary>
    private bool ApplyWindow(Span<float> parameters, ReadOnlySpan<float> gradient, int origin, float learningRate, int start, int end)
    {
        bool finite = true;
        for (int l = 0; l < _arch.Layers.Count; l++)
        {
            // Weights then biases of layer l; weight decay on the weights only.
            finite &= ApplyIntersection(parameters, gradient, origin, _arch.WeightOffset(l), _arch.WeightCount(l), start, end, learningRate, Settings.WeightDecay);
            finite &= ApplyIntersection(parameters, gradient, origin, _arch.BiasOffset(l), _arch.Layers[l].Outputs, start, end, learningRate, 0f);
        }
        return finite;
    }

    private bool ApplyIntersection(Span<float> parameters, ReadOnlySpan<float> gradient, int origin, int offset, int count, int start, int end, float lr, float decay)
    {
        int from = Math.Max(offset, start), to = Math.Min(offset + count, end);
        return from >= to || ApplySection(parameters.Slice(from - origin, to - from), gradient.Slice(from - origin, to - from), from, lr, decay);
    }

    /// <summary>
    /// One section of one tensor: <paramref name="w"/> and <paramref name="g"/> start at parameter <paramref name="offset"/>.
    /// Returns whether the new parameters, and Adam's new v, are finite: they show any overflow of SGD's or
    /// momentum's update (w ← w − γv) and a NaN or infinite Adam m; Adam's v ← β2 v + (1 − β2) g² can overflow
    /// alone (the step m̂/(√v̂ + ε) is then 0, and stays 0 for ever). Each value is checked in the register it was
    /// computed in, rather than read again by a second pass.
    /// </summary>
    private bool ApplySection(Span<float> w, ReadOnlySpan<float> g, int offset, float lr, float decay)
    {
        int count = w.Length;
        // The loops below index g, v and m by w's length without bounds checks.
        if (g.Length != count)
        {
            throw new ArgumentException($"{count} parameters but {g.Length} gradients");
        }
        return Settings.Kind switch
        {
            OptimizerKind.Sgd => Sgd(w, g, lr, decay),
            OptimizerKind.Momentum => Momentum(w, g, Velocity.AsSpan(offset, count), lr, decay, Settings.Momentum, Settings.Nesterov),
            OptimizerKind.Adam => Adam(w, g, FirstMoment.AsSpan(offset, count), SecondMoment.AsSpan(offset, count), lr, decay),
            _ => throw new InvalidOperationException($"unknown optimizer {Settings.Kind}"),
        };
    }

    // SGD (lecture): w ← w − γ(g + λw)
    private static bool Sgd(Span<float> w, ReadOnlySpan<float> g, float lr, float decay)
    {
        ref float wr = ref MemoryMarshal.GetReference(w);
        ref float gr = ref MemoryMarshal.GetReference(g);
        nuint count = (nuint)w.Length, width = (nuint)Vector<float>.Count, i = 0;
        Vector<int> notFinite = Vector<int>.Zero;
        if (Vector.IsHardwareAccelerated)
        {
            for (; i + width <= count; i += width)
            {
                var wi = Vector.LoadUnsafe(ref wr, i);
                var gi = Vector.LoadUnsafe(ref gr, i) + wi * decay;
                Vector<float> updated = wi - gi * lr;
                updated.StoreUnsafe(ref wr, i);
                notFinite |= FiniteValues.NotFinite(updated);
            }
        }
        bool finite = FiniteValues.None(notFinite);
        for (; i < count; i++)
        {
            ref float wi = ref Unsafe.Add(ref wr, i);
            float gi = Unsafe.Add(ref gr, i) + wi * decay;
            wi = wi - gi * lr;
            finite &= float.IsFinite(wi);
        }
        return finite;
    }

    // Momentum (Sutskever et al. 2013, PyTorch form): v ← μv + (g + λw); w ← w − γv,
    // or with Nesterov w ← w − γ(g + λw + μv).
    private static bool Momentum(Span<float> w, ReadOnlySpan<float> g, Span<float> v, float lr, float decay, float mu, bool nesterov)
    {
        ref float wr = ref MemoryMarshal.GetReference(w);
        ref float gr = ref MemoryMarshal.GetReference(g);
        ref float vr = ref MemoryMarshal.GetReference(v);
        nuint count = (nuint)w.Length, width = (nuint)Vector<float>.Count, i = 0;
        Vector<int> notFinite = Vector<int>.Zero;
        if (Vector.IsHardwareAccelerated)
        {
            for (; i + width <= count; i += width)
            {
                var wi = Vector.LoadUnsafe(ref wr, i);
                var gi = Vector.LoadUnsafe(ref gr, i) + wi * decay;
                var vi = Vector.LoadUnsafe(ref vr, i) * mu + gi;
                vi.StoreUnsafe(ref vr, i);
                var step = nesterov ? gi + vi * mu : vi;
                Vector<float> updated = wi - step * lr;
                updated.StoreUnsafe(ref wr, i);
                notFinite |= FiniteValues.NotFinite(updated);
            }
        }
        bool finite = FiniteValues.None(notFinite);
        for (; i < count; i++)
        {
            ref float wi = ref Unsafe.Add(ref wr, i);
            float gi = Unsafe.Add(ref gr, i) + wi * decay;
            float vi = Unsafe.Add(ref vr, i) * mu + gi;
            Unsafe.Add(ref vr, i) = vi;
            float step = nesterov ? gi + vi * mu : vi;
            wi = wi - step * lr;
            finite &= float.IsFinite(wi);
        }
        return finite;
    }

    // Adam (Kingma & Ba 2015, Alg. 1) with decoupled decay (AdamW):
    //   m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
    //   w ← w − γλw − (γ / (1−β1^t)) · m / (√v / √(1−β2^t) + ε)
    private bool Adam(Span<float> w, ReadOnlySpan<float> g, Span<float> m, Span<float> v, float lr, float decay)
    {
        float beta1 = Settings.Beta1, beta2 = Settings.Beta2, eps = Settings.Epsilon;
        float stepSize = (float)(lr / (1 - _beta1Power));
        float sqrtCorrection2 = (float)Math.Sqrt(1 - _beta2Power);
        float keep = 1f - lr * decay;
        float oneMinusBeta1 = 1f - beta1, oneMinusBeta2 = 1f - beta2;
        ref float wr = ref MemoryMarshal.GetReference(w);
        ref float gr = ref MemoryMarshal.GetReference(g);
        ref float mr = ref MemoryMarshal.GetReference(m);
        ref float vr = ref MemoryMarshal.GetReference(v);
        nuint count = (nuint)w.Length, width = (nuint)Vector<float>.Count, i = 0;
        Vector<int> notFinite = Vector<int>.Zero;
        if (Vector.IsHardwareAccelerated)
        {
            for (; i + width <= count; i += width)
            {
                var gi = Vector.LoadUnsafe(ref gr, i);
                var mi = Vector.LoadUnsafe(ref mr, i) * beta1 + gi * oneMinusBeta1;
                var vi = Vector.LoadUnsafe(ref vr, i) * beta2 + gi * gi * oneMinusBeta2;
                mi.StoreUnsafe(ref mr, i);
                vi.StoreUnsafe(ref vr, i);
                var denominator = Vector.SquareRoot(vi) / sqrtCorrection2 + new Vector<float>(eps);
                Vector<float> updated = Vector.LoadUnsafe(ref wr, i) * keep - mi / denominator * stepSize;
                updated.StoreUnsafe(ref wr, i);
                notFinite |= FiniteValues.NotFinite(updated) | FiniteValues.NotFinite(vi);
            }
        }
        bool finite = FiniteValues.None(notFinite);
        for (; i < count; i++)
        {
            float gi = Unsafe.Add(ref gr, i);
            float mi = Unsafe.Add(ref mr, i) * beta1 + gi * oneMinusBeta1;
            float vi = Unsafe.Add(ref vr, i) * beta2 + gi * gi * oneMinusBeta2;
            Unsafe.Add(ref mr, i) = mi;
            Unsafe.Add(ref vr, i) = vi;
            float denominator = MathF.Sqrt(vi) / sqrtCorrection2 + eps;
            ref float wi = ref Unsafe.Add(ref wr, i);
            wi = wi * keep - mi / denominator * stepSize;
            finite &= float.IsFinite(wi) && float.IsFinite(vi);
        }
        return finite;
    }
}
