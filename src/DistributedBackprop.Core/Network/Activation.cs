using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using DistributedBackprop.Kernels;

namespace DistributedBackprop.Network;

/// <summary>σ of a layer: a_l = σ(z_l). Softmax is allowed on the output layer only.</summary>
public enum Activation
{
    Identity,
    Sigmoid,
    Tanh,
    Relu,
    Softmax,
}

public static class Activations
{
    public static string Name(this Activation activation) => activation switch
    {
        Activation.Identity => "identity",
        Activation.Sigmoid => "sigmoid",
        Activation.Tanh => "tanh",
        Activation.Relu => "relu",
        Activation.Softmax => "softmax",
        _ => throw new ArgumentOutOfRangeException(nameof(activation)),
    };

    public static bool TryParse(string text, out Activation activation)
    {
        foreach (Activation candidate in Enum.GetValues<Activation>())
        {
            if (string.Equals(candidate.Name(), text.Trim(), StringComparison.OrdinalIgnoreCase))
            {
                activation = candidate;
                return true;
            }
        }
        activation = default;
        return false;
    }

    public static Activation Parse(string text) =>
        TryParse(text, out Activation activation)
            ? activation
            : throw new FormatException($"unknown activation '{text}' (expected identity, sigmoid, tanh, relu or softmax)");

    /// <summary>
    /// a = σ(z) for one row. In float (the trainer's precision) every function is <see cref="PortableMath"/>'s,
    /// defined once in IEEE operations, so a row's activations are the same bits on every CPU and vector
    /// width, whoever computes them. Double (the reference precision of the gradient checks and `dbp
    /// gradients`) uses the runtime's functions: its bits never reach a model.
    /// </summary>
    public static void ForwardRow<T>(Activation activation, ReadOnlySpan<T> z, Span<T> a)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (typeof(T) == typeof(float))
        {
            ForwardRow(activation, MemoryMarshal.Cast<T, float>(z), MemoryMarshal.Cast<T, float>(a));
            return;
        }
        switch (activation)
        {
            case Activation.Identity:
                z.CopyTo(a);
                break;
            case Activation.Sigmoid:
                TensorPrimitives.Sigmoid(z, a);
                break;
            case Activation.Tanh:
                TensorPrimitives.Tanh(z, a);
                break;
            case Activation.Relu:
                TensorPrimitives.Max(z, T.Zero, a);
                break;
            case Activation.Softmax:
                // Shift by the row maximum so exp never overflows: softmax(z) = softmax(z − max z).
                T max = TensorPrimitives.Max(z);
                TensorPrimitives.Subtract(z, max, a);
                TensorPrimitives.Exp(a, a);
                TensorPrimitives.Divide(a, TensorPrimitives.Sum<T>(a), a);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(activation));
        }
    }

    private static void ForwardRow(Activation activation, ReadOnlySpan<float> z, Span<float> a)
    {
        switch (activation)
        {
            case Activation.Identity:
                z.CopyTo(a);
                break;
            case Activation.Sigmoid:
                PortableMath.Sigmoid(z, a);
                break;
            case Activation.Tanh:
                PortableMath.Tanh(z, a);
                break;
            case Activation.Relu:
                PortableMath.Relu(z, a);
                break;
            case Activation.Softmax:
                PortableMath.Softmax(z, a);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(activation));
        }
    }

    /// <summary>
    /// δ = ∂J/∂z from dA = ∂J/∂a for one row (lecture: ∂J/∂z_l = ∂J/∂a_l ⊙ σ'(z_l)), in place in
    /// <paramref name="delta"/> which holds dA on entry. Uses a_l where σ' is cheapest in it:
    /// sigmoid' = a(1 − a), tanh' = 1 − a², relu' = [z &gt; 0], softmax: δ = a ⊙ (dA − ⟨dA, a⟩).
    /// <paramref name="scratch"/> is one row long. Apart from the softmax's dot, every operation here is a
    /// single correctly rounded IEEE operation per element, the same bits on every CPU.
    /// </summary>
    public static void BackwardRow<T>(Activation activation, ReadOnlySpan<T> z, ReadOnlySpan<T> a, Span<T> delta, Span<T> scratch)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        switch (activation)
        {
            case Activation.Identity:
                break;
            case Activation.Sigmoid:
                TensorPrimitives.Subtract(T.One, a, scratch);
                TensorPrimitives.Multiply(scratch, a, scratch);
                TensorPrimitives.Multiply(delta, scratch, delta);
                break;
            case Activation.Tanh:
                TensorPrimitives.Multiply(a, a, scratch);
                TensorPrimitives.Subtract(T.One, scratch, scratch);
                TensorPrimitives.Multiply(delta, scratch, delta);
                break;
            case Activation.Relu:
                ReluMask(z, delta);
                break;
            case Activation.Softmax:
                // ⟨dA, a⟩ in PortableMath's fixed order for float (a sum's order changes its bits).
                T dot = typeof(T) == typeof(float)
                    ? T.CreateTruncating(PortableMath.Dot(MemoryMarshal.Cast<T, float>(delta), MemoryMarshal.Cast<T, float>(a)))
                    : TensorPrimitives.Dot(delta, a);
                TensorPrimitives.Subtract(delta, dot, delta);
                TensorPrimitives.Multiply(delta, a, delta);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(activation));
        }
    }

    /// <summary>delta[i] ← z[i] &gt; 0 ? delta[i] : 0 (a select, no arithmetic, so no rounding to worry about).</summary>
    private static void ReluMask<T>(ReadOnlySpan<T> z, Span<T> delta)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated && Vector<T>.IsSupported)
        {
            ReadOnlySpan<Vector<T>> zv = System.Runtime.InteropServices.MemoryMarshal.Cast<T, Vector<T>>(z);
            Span<Vector<T>> dv = System.Runtime.InteropServices.MemoryMarshal.Cast<T, Vector<T>>(delta);
            int count = Math.Min(zv.Length, dv.Length);
            for (int v = 0; v < count; v++)
            {
                dv[v] = Vector.ConditionalSelect(Vector.GreaterThan(zv[v], Vector<T>.Zero), dv[v], Vector<T>.Zero);
            }
            i = count * Vector<T>.Count;
        }
        for (; i < delta.Length; i++)
        {
            if (!(z[i] > T.Zero))
            {
                delta[i] = T.Zero;
            }
        }
    }
}
