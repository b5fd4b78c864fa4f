using DistributedBackprop.Randomness;

namespace DistributedBackprop.Network;

/// <summary>
/// Initial parameters: uniform Glorot/Xavier for sigmoid, tanh, identity and softmax layers
/// (Glorot &amp; Bengio 2010: U(±√(6/(in+out)))) and uniform He for ReLU layers (He et al. 2015:
/// variance 2/in, i.e. U(±√(6/in))); biases 0. Uniform rather than normal so no transcendental function
/// (whose last bit may differ between C libraries) touches the initial weights.
/// </summary>
public static class Initialisation
{
    public static float[] Create(Architecture architecture, ulong seed)
    {
        var parameters = new float[architecture.ParameterCount];
        Fill(architecture, seed, parameters);
        return parameters;
    }

    public static void Fill(Architecture architecture, ulong seed, Span<float> parameters)
    {
        var random = Xoshiro256.ForStream(seed, StreamPurpose.Initialisation);
        for (int l = 0; l < architecture.Layers.Count; l++)
        {
            LayerSpec layer = architecture.Layers[l];
            double fanSum = layer.Activation == Activation.Relu ? layer.Inputs : layer.Inputs + layer.Outputs;
            float bound = (float)Math.Sqrt(6.0 / fanSum);
            Span<float> weights = architecture.Weight(parameters, l);
            for (int i = 0; i < weights.Length; i++)
            {
                weights[i] = (2f * random.NextSingle() - 1f) * bound;
            }
            architecture.Bias(parameters, l).Clear();
        }
    }
}
